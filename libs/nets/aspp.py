"""Atrous Spatial Pyramid Pooling with image-level features (paper, section 3.3).

ASPP runs four parallel branches on the backbone's features: a 1x1 conv and three 3x3 atrous convs
whose rates are (6, 12, 18) at output stride 16, plus image pooling (global average pool, 1x1 conv,
batch norm, bilinear upsample). Each has 256 filters and batch norm. The five outputs are
concatenated and projected by a 1x1 conv with 256 filters and batch norm.
"""
import tensorflow as tf

from libs.nets.layers import BatchNorm, Conv2D

ASPP_DEPTH = 256
# The rates at output stride 16; they scale inversely with the output stride (doubled at OS 8),
# so that the branches see the same field of view in pixels.
RATES_AT_OS16 = (6, 12, 18)


def aspp_rates(output_stride):
    """Atrous rates of the three 3x3 branches: (6, 12, 18) at OS 16, (12, 24, 36) at OS 8."""
    return tuple(rate * 16 // output_stride for rate in RATES_AT_OS16)


class ASPP(tf.Module):
    """ASPP under the scopes of tensorflow/models research/deeplab: `aspp0` (1x1), `aspp1`-`aspp3`
    (3x3 atrous), `image_pooling`, `concat_projection`."""

    def __init__(self, in_channels, rng, bn_args, depth=ASPP_DEPTH):
        super().__init__(name=None)
        self.branches = []
        for index, kernel_size in enumerate((1,) + (3,) * len(RATES_AT_OS16)):
            scope = f'aspp{index}'
            self.branches.append((Conv2D(scope, kernel_size, in_channels, depth, rng),
                                  BatchNorm(scope, depth, **bn_args)))
        self.pool_conv = Conv2D('image_pooling', 1, in_channels, depth, rng)
        self.pool_bn = BatchNorm('image_pooling', depth, **bn_args)
        num_branches = len(self.branches) + 1
        self.projection = Conv2D('concat_projection', 1, num_branches * depth, depth, rng)
        self.projection_bn = BatchNorm('concat_projection', depth, **bn_args)

    def __call__(self, features, output_stride, training):
        """[B, h, w, in_channels] -> [B, h, w, 256]."""
        rates = (1,) + aspp_rates(output_stride)
        outputs = [tf.nn.relu(bn(conv(features, rate=rate), training))
                   for (conv, bn), rate in zip(self.branches, rates)]
        pooled = tf.reduce_mean(features, axis=[1, 2], keepdims=True)
        pooled = tf.nn.relu(self.pool_bn(self.pool_conv(pooled), training))
        # Bilinear upsampling of a 1x1 map is a constant map: broadcast it.
        outputs.append(tf.broadcast_to(pooled, tf.concat([tf.shape(features)[:3],
                                                          tf.shape(pooled)[3:]], axis=0)))
        net = tf.concat(outputs, axis=3)
        return tf.nn.relu(self.projection_bn(self.projection(net), training))
