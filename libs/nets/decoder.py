"""The DeepLabV3+ decoder (Chen et al., 2018, "Encoder-Decoder with Atrous Separable Convolution
for Semantic Image Segmentation", section 3.1, Fig. 2), as the reference builds it
(research/deeplab/model.py `refine_by_decoder`).

The encoder's output (ASPP, at output stride 16 or 8) is resized with corners aligned to the
backbone's low-level features (at the decoder's output stride, 4 in every published checkpoint),
whose depth a 1x1 convolution reduces to 48 (`decoder/feature_projection0`); the two are
concatenated [encoder, projection] and refined by two separable 3x3 convolutions of 256
(`decoder/decoder_conv0`, `decoder/decoder_conv1`). Batch norm (epsilon 1e-5) and ReLU follow every
convolution.
"""
import tensorflow as tf

from libs.nets.layers import Conv2D, ConvBN, SeparableConvBN, resize_aligned_corners

SCOPE = 'decoder'
PROJECTION_DEPTH = 48
DECODER_DEPTH = 256


class Decoder(tf.Module):
    """The V3+ decoder under the scope `decoder/`.

    Args:
        encoder_channels: the encoder output's depth (256).
        low_level_channels: the depth of the backbone's low-level end point.
        rng, bn_args: initial weights' generator; `BatchNorm` arguments.
    """

    def __init__(self, encoder_channels, low_level_channels, rng, bn_args):
        super().__init__(name=None)
        self.projection = ConvBN(Conv2D(f'{SCOPE}/feature_projection0', 1, low_level_channels,
                                        PROJECTION_DEPTH, rng), bn_args, tf.nn.relu)
        self.conv0 = SeparableConvBN(f'{SCOPE}/decoder_conv0',
                                     encoder_channels + PROJECTION_DEPTH, DECODER_DEPTH, rng,
                                     bn_args)
        self.conv1 = SeparableConvBN(f'{SCOPE}/decoder_conv1', DECODER_DEPTH, DECODER_DEPTH, rng,
                                     bn_args)
        self.out_channels = DECODER_DEPTH

    def __call__(self, encoder, low_level, training):
        """encoder [B, h, w, 256], low_level [B, H, W, C] -> [B, H, W, 256]."""
        size = tf.shape(low_level)[1:3]
        encoder = tf.cast(resize_aligned_corners(encoder, size), low_level.dtype)
        net = tf.concat([encoder, self.projection(low_level, training)], axis=3)
        return self.conv1(self.conv0(net, training), training)
