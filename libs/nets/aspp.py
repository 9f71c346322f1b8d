"""Atrous Spatial Pyramid Pooling with image-level features (paper, section 3.3).

ASPP runs parallel branches on the backbone's features: a 1x1 conv (`aspp0`), 3x3 atrous convs
(`aspp1`...) whose rates are (6, 12, 18) at output stride 16, and image pooling (global average
pool, 1x1 conv, batch norm, bilinear upsample). Each has 256 filters, batch norm and ReLU. The
outputs are concatenated and projected by a 1x1 conv (`concat_projection`) with 256 filters.

As the reference DeepLab builds it (research/deeplab/model.py `extract_features`): the atrous
branches are regular 3x3 convolutions (the paper's) or separable ones (`aspp<i>_depthwise` +
`aspp<i>_pointwise`, DeepLabV3+ section 3.1, the published Xception checkpoints), or there are none
(the published MobileNetV2 checkpoints: image pooling and `aspp0` only); image pooling comes first
in the concatenation. Runs of this project written before the reference's order was adopted
concatenated image pooling last; `pooling_first=False` keeps that order for them.
"""
import tensorflow as tf

from libs.nets.layers import BatchNorm, Conv2D, SeparableConvBN

ASPP_DEPTH = 256
# The rates at output stride 16; they scale inversely with the output stride (doubled at OS 8),
# so that the branches see the same field of view in pixels.
RATES_AT_OS16 = (6, 12, 18)


def aspp_rates(output_stride, rates_at_os16=RATES_AT_OS16):
    """Atrous rates of the 3x3 branches: (6, 12, 18) at OS 16, (12, 24, 36) at OS 8."""
    return tuple(rate * 16 // output_stride for rate in rates_at_os16)


class ASPP(tf.Module):
    """ASPP under the scopes of tensorflow/models research/deeplab: `aspp0` (1x1), `aspp1`...
    (3x3 atrous, regular or separable), `image_pooling`, `concat_projection`.

    Args:
        in_channels: the backbone's feature depth.
        rng, bn_args: initial weights' generator; `BatchNorm` arguments (epsilon 1e-5).
        rates_at_os16: the atrous branches' rates at output stride 16; () for none.
        separable: separable atrous branches.
        pooling_first: image pooling first in the concatenation (the reference's order).
    """

    def __init__(self, in_channels, rng, bn_args, depth=ASPP_DEPTH, rates_at_os16=RATES_AT_OS16,
                 separable=False, pooling_first=True):
        super().__init__(name=None)
        self.rates_at_os16 = tuple(rates_at_os16)
        self.separable = separable
        self.pooling_first = pooling_first
        # (conv, batch norm) pairs for the regular branches; the layout of earlier runs'
        # checkpoints, which name objects by attribute.
        self.branches = [(Conv2D('aspp0', 1, in_channels, depth, rng),
                          BatchNorm('aspp0', depth, **bn_args))]
        for index in range(1, len(self.rates_at_os16) + 1):
            scope = f'aspp{index}'
            if separable:
                self.branches.append(SeparableConvBN(scope, in_channels, depth, rng, bn_args))
            else:
                self.branches.append((Conv2D(scope, 3, in_channels, depth, rng),
                                      BatchNorm(scope, depth, **bn_args)))
        self.pool_conv = Conv2D('image_pooling', 1, in_channels, depth, rng)
        self.pool_bn = BatchNorm('image_pooling', depth, **bn_args)
        num_branches = len(self.branches) + 1
        self.projection = Conv2D('concat_projection', 1, num_branches * depth, depth, rng)
        self.projection_bn = BatchNorm('concat_projection', depth, **bn_args)

    def __call__(self, features, output_stride, training):
        """[B, h, w, in_channels] -> [B, h, w, 256]."""
        rates = (1,) + aspp_rates(output_stride, self.rates_at_os16)
        outputs = []
        for branch, rate in zip(self.branches, rates):
            if isinstance(branch, SeparableConvBN):
                outputs.append(branch(features, training, rate=rate))
            else:
                conv, bn = branch
                outputs.append(tf.nn.relu(bn(conv(features, rate=rate), training)))
        pooled = tf.reduce_mean(features, axis=[1, 2], keepdims=True)
        pooled = tf.nn.relu(self.pool_bn(self.pool_conv(pooled), training))
        # Bilinear upsampling of a 1x1 map is a constant map: broadcast it.
        pooled = tf.broadcast_to(pooled, tf.concat([tf.shape(features)[:3],
                                                    tf.shape(pooled)[3:]], axis=0))
        outputs = [pooled] + outputs if self.pooling_first else outputs + [pooled]
        net = tf.concat(outputs, axis=3)
        return tf.nn.relu(self.projection_bn(self.projection(net), training))
