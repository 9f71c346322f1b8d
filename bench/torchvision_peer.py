"""torchvision peer of the project's benchmark: DeepLabV3 with a dilated torchvision ResNet at output
stride 8 or 16, ASPP (rates 6/12/18 at OS16, doubled at OS8) with image pooling, 1x1 classifier,
bilinear upsampling; fp32 on 2 CPU threads. Prints median seconds per step as JSON.
usage: python3 bench/torchvision_peer.py MODE(inference|train) DEPTH OS SIZE BATCH STEPS"""
import json, sys, time
import torch, torchvision
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP

mode, depth, os_, size, batch, steps = sys.argv[1], *map(int, sys.argv[2:7])
torch.set_num_threads(2)
rates = [6, 12, 18] if os_ == 16 else [12, 24, 36]
dil = [False, False, True] if os_ == 16 else [False, True, True]
backbone = getattr(torchvision.models, f"resnet{depth}")(replace_stride_with_dilation=dil)
body = nn.Sequential(*list(backbone.children())[:-2])
aspp = ASPP(2048, rates, 256)
aspp.project[-1] = nn.Identity()  # no dropout, as in the paper
head = nn.Conv2d(256, 21, 1)
class Net(nn.Module):
    def __init__(s): super().__init__(); s.body, s.aspp, s.head = body, aspp, head
    def forward(s, x):
        y = s.head(s.aspp(s.body(x)))
        return nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
net = Net()
x = torch.randn(batch, 3, size, size)
y = torch.randint(0, 21, (batch, size, size))
opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
def step():
    if mode == "inference":
        with torch.inference_mode():
            net.eval(); net(x)
    else:
        net.train(); opt.zero_grad(); nn.functional.cross_entropy(net(x), y, ignore_index=255).backward(); opt.step()
step(); step()
ts = []
for _ in range(steps):
    t = time.perf_counter(); step(); ts.append(time.perf_counter() - t)
ts.sort()
print(json.dumps({"framework": "torchvision", "mode": mode, "seconds_per_step": ts[len(ts) // 2]}))
