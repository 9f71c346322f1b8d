"""torchvision peer of the project's benchmark: DeepLabV3 with a dilated torchvision ResNet at
output stride 8 or 16, ASPP (rates 6/12/18 at OS16, doubled at OS8) with image pooling, 1x1
classifier, bilinear upsampling; on 2 CPU threads, float32 NCHW unless told otherwise. Prints
median seconds per step as JSON.
usage: python3 bench/torchvision_peer.py MODE(inference|train) DEPTH OS SIZE BATCH STEPS
           [--channels-last] [--autocast-bf16] [--model NAME]
--channels-last: the network's weights and the input in torch.channels_last (NHWC) memory format,
  torchvision's fastest CPU layout. --autocast-bf16: forward (and loss) under
  torch.autocast('cpu', dtype=torch.bfloat16), torch's mixed precision: convolutions and matmuls
  in bfloat16, weights and the optimiser float32; backward outside the autocast region, as torch
  documents. --model deeplabv3_mobilenet_v3_large|lraspp_mobilenet_v3_large: torchvision's own
  mobile segmentation model of that name (random weights, 21 classes, no auxiliary head) in place
  of the ResNet DeepLabV3; DEPTH and OS are then ignored (those models fix their own)."""
import argparse, contextlib, json, time
import torch, torchvision
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP

p = argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("mode", choices=("inference", "train"))
for name in ("depth", "os", "size", "batch", "steps"):
    p.add_argument(name, type=int)
p.add_argument("--channels-last", action="store_true")
p.add_argument("--autocast-bf16", action="store_true")
p.add_argument("--model", choices=("deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"))
a = p.parse_args()
torch.set_num_threads(2)
class Net(nn.Module):
    def __init__(s, body, aspp, head): super().__init__(); s.body, s.aspp, s.head = body, aspp, head
    def forward(s, x):
        y = s.head(s.aspp(s.body(x)))
        return nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
class Mobile(nn.Module):
    def __init__(s, segmentation): super().__init__(); s.net = segmentation
    def forward(s, x): return s.net(x)["out"]
if a.model:
    net = Mobile(getattr(torchvision.models.segmentation, a.model)(
        weights=None, weights_backbone=None, num_classes=21))
else:
    rates = [6, 12, 18] if a.os == 16 else [12, 24, 36]
    dil = [False, False, True] if a.os == 16 else [False, True, True]
    backbone = getattr(torchvision.models, f"resnet{a.depth}")(replace_stride_with_dilation=dil)
    aspp = ASPP(2048, rates, 256)
    aspp.project[-1] = nn.Identity()  # no dropout, as in the paper
    net = Net(nn.Sequential(*list(backbone.children())[:-2]), aspp, nn.Conv2d(256, 21, 1))
x = torch.randn(a.batch, 3, a.size, a.size)
y = torch.randint(0, 21, (a.batch, a.size, a.size))
if a.channels_last:
    net = net.to(memory_format=torch.channels_last)
    x = x.to(memory_format=torch.channels_last)
opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
def precision():
    return (torch.autocast("cpu", dtype=torch.bfloat16) if a.autocast_bf16
            else contextlib.nullcontext())
def step():
    if a.mode == "inference":
        with torch.inference_mode(), precision():
            net.eval(); net(x)
    else:
        net.train(); opt.zero_grad()
        with precision():
            loss = nn.functional.cross_entropy(net(x), y, ignore_index=255)
        loss.backward(); opt.step()
step(); step()
ts = []
for _ in range(a.steps):
    t = time.perf_counter(); step(); ts.append(time.perf_counter() - t)
ts.sort()
print(json.dumps({"framework": "torchvision", "mode": a.mode, "channels_last": a.channels_last,
                  "autocast_bf16": a.autocast_bf16, "seconds_per_step": ts[len(ts) // 2]}))
