"""DeepLabV3 (Chen et al., 2017): ResNet-v1 with atrous convolution, ASPP, and 1x1 logits.

The weights do not depend on the output stride (only strides and rates do), so the output stride is
an argument of each call: a model trained at OS 16 is evaluated at OS 8 (paper, section 4.1) by
calling it with `output_stride=8`.
"""
import numpy as np
import tensorflow as tf

from libs.nets.aspp import ASPP, ASPP_DEPTH
from libs.nets.layers import Conv2D
from libs.nets.resnet_v1 import ResNetV1, unit_strides_and_rates

LOGITS_SCOPE = 'logits/semantic'


class DeepLabV3(tf.Module):
    """The DeepLabV3 network.

    Args:
        num_classes: number of output classes (21 for VOC).
        depth: ResNet depth, 50, 101 or 152.
        output_stride: the default output stride of a call, 8, 16 or 32.
        multi_grid: block4's unit rate multipliers (paper, Table 3); (1, 2, 4) by default.
        freeze_bn: batch norm uses its moving statistics and gamma/beta are not trained.
        sync_bn: batch statistics are all-reduced across replicas (MirroredStrategy).
        bn_decay: moving-average decay of batch norm; 0.9997 in the paper.
        seed: seed of the initial weights; the same seed gives the same network.
    """

    def __init__(self, num_classes=21, depth=101, output_stride=16, multi_grid=(1, 2, 4),
                 freeze_bn=False, sync_bn=False, bn_decay=0.9997, seed=None):
        super().__init__(name='deeplabv3')
        rng = np.random.default_rng(seed)
        bn_args = dict(decay=bn_decay, frozen=freeze_bn, sync=sync_bn)
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.backbone = ResNetV1(depth, multi_grid, rng, bn_args)
        self.aspp = ASPP(self.backbone.out_channels, rng, bn_args)
        self.classifier = Conv2D(LOGITS_SCOPE, 1, ASPP_DEPTH, num_classes, rng, use_bias=True)
        unit_strides_and_rates(depth, output_stride, multi_grid)  # Refuses a bad output stride.

    def __call__(self, images, training=False, output_stride=None):
        """Computes logits at 1/OS of the input.

        Args:
            images: normalised images [B, H, W, 3] (see `input_pipeline.normalize`).
            training: batch statistics and moving-average updates in batch norm (unless frozen).
            output_stride: overrides the model's default output stride for this call.
        Returns:
            logits [B, ceil(H / OS), ceil(W / OS), num_classes].
        """
        output_stride = output_stride or self.output_stride
        features, _ = self.backbone(images, output_stride, training)
        net = self.aspp(features, output_stride, training)
        return self.classifier(net)

    @property
    def regularized_variables(self):
        """Convolution kernels (`.../weights`): weight decay applies to these and nothing else."""
        return [v for v in self.trainable_variables if v.name.endswith('/weights:0')]


def resize_aligned_corners(images, size):
    """Bilinear resize of [B, h, w, C] to `size` (H, W) with corners aligned: pixel i goes to
    i * (H - 1) / (h - 1), so the first and last rows and columns stay in place.

    TensorFlow 2's `tf.image.resize` has no corner alignment; this is the op behind TF1's
    `resize_bilinear(align_corners=True)`, which the reference DeepLab uses. Returns float32.
    """
    return tf.raw_ops.ResizeBilinear(images=images, size=size, align_corners=True,
                                     half_pixel_centers=False)


def upsample_logits(logits, size):
    """Bilinear upsampling of logits [B, h, w, C] to `size` (H, W), corners aligned.

    Feature i sits on input pixel i * OS (slim's conv2d_same), so aligning corners maps features
    back onto the pixels they were computed at when the input was OS*k + 1 pixels on each side
    (training crops; inference pads to such sizes, see `libs/evaluation/inference.py`).
    """
    return resize_aligned_corners(logits, size)
