"""Batch norm folded into the convolutions before it, for inference and export.

At inference batch norm is a per-channel affine map with fixed statistics,
`y = gamma * (x - mean) / sqrt(variance + eps) + beta`, and `x` is a convolution's output, so it
folds into that convolution: the kernel's output channels are scaled by
`s = gamma / sqrt(variance + eps)` and a bias `beta - s * mean` is added. The folded network
computes the same logits with one op (convolution + bias) where there were two.

The folded modules subclass the network's own modules and run their forward code unchanged, with
each batch norm replaced by the identity, so the two networks cannot drift apart.
"""
import numpy as np
import tensorflow as tf

from libs.nets.aspp import ASPP
from libs.nets.deeplabv3 import DeepLabV3
from libs.nets.layers import BN_EPSILON, Conv2D, ConvBN, DepthwiseConv2D, SeparableConvBN
from libs.nets.resnet_v1 import Bottleneck, ResNetV1

# The model's inference path (`tf.compat.v1.nn.fused_batch_norm`) raises epsilon to at least
# 1.001e-5; folding uses the same value, so that it reproduces those logits, not a near copy.
MIN_INFERENCE_EPSILON = 1.001e-5
INFERENCE_EPSILON = max(BN_EPSILON, MIN_INFERENCE_EPSILON)


def _folded_conv_class(conv):
    return FoldedDepthwiseConv2D if isinstance(conv, DepthwiseConv2D) else FoldedConv2D


def _scale_and_bias(conv, bn, channels):
    """Per output channel, the scale the kernel takes and the bias, in float64."""
    scale, bias = np.ones(channels), np.zeros(channels)
    if bn is not None:
        epsilon = max(bn.epsilon, MIN_INFERENCE_EPSILON)
        scale = (bn.gamma.numpy().astype(np.float64)
                 / np.sqrt(bn.moving_variance.numpy().astype(np.float64) + epsilon))
        bias = bn.beta.numpy() - scale * bn.moving_mean.numpy()
    if conv.bias is not None:
        bias = bias + scale * conv.bias.numpy()
    return scale, bias


class FoldedConv2D(Conv2D):
    """A `Conv2D` with bias whose weights are `conv`'s with the batch norm `bn` after it folded in.

    Variables: `<conv scope>/weights` and `<conv scope>/biases` (float32), computed in float64.
    With `bn=None` they are copies of `conv`'s (a zero bias where it has none).
    """

    def __init__(self, conv, bn=None):
        tf.Module.__init__(self, name=None)
        self.scope = conv.scope
        self.kernel_size = conv.kernel_size
        self.padding = conv.padding
        scale, bias = _scale_and_bias(conv, bn, conv.kernel.shape[-1])
        self.kernel = tf.Variable((conv.kernel.numpy() * scale).astype(np.float32),
                                  name=f'{conv.scope}/weights')
        self.bias = tf.Variable(bias.astype(np.float32), name=f'{conv.scope}/biases')


class FoldedDepthwiseConv2D(DepthwiseConv2D):
    """A `DepthwiseConv2D` with its batch norm folded in: `<scope>/depthwise_weights` scaled per
    channel (axis 2), and `<scope>/biases`."""

    def __init__(self, conv, bn=None):
        tf.Module.__init__(self, name=None)
        self.scope = conv.scope
        self.kernel_size = conv.kernel_size
        self.padding = conv.padding
        scale, bias = _scale_and_bias(conv, bn, conv.kernel.shape[2])
        self.kernel = tf.Variable(
            (conv.kernel.numpy() * scale[:, np.newaxis]).astype(np.float32),
            name=f'{conv.scope}/depthwise_weights')
        self.bias = tf.Variable(bias.astype(np.float32), name=f'{conv.scope}/biases')


def fold(module):
    """A copy of `module` for inference with every batch norm folded into its convolution.

    `ConvBN` units are folded; the ResNet and ASPP modules, whose checkpoints name their
    (convolution, batch norm) pairs by attribute, have folded classes of their own; any other
    module is copied with its parts folded, and runs its own forward code unchanged.
    """
    if isinstance(module, ConvBN):
        folded = object.__new__(ConvBN)
        tf.Module.__init__(folded, name=None)
        folded.conv = _folded_conv_class(module.conv)(module.conv, module.bn)
        folded.bn = _identity
        folded.activation = module.activation
        return folded
    if isinstance(module, ResNetV1):
        return _FoldedResNetV1(module)
    if isinstance(module, ASPP):
        return _FoldedASPP(module)
    if isinstance(module, Conv2D):
        return FoldedConv2D(module)
    if isinstance(module, tf.Module):
        copy = object.__new__(type(module))
        tf.Module.__init__(copy, name=None)
        for name, value in vars(module).items():
            if not name.startswith('_'):
                setattr(copy, name, fold(value))
        return copy
    if isinstance(module, list):
        return [fold(item) for item in module]
    if isinstance(module, tuple) and not hasattr(module, '_fields'):
        return tuple(fold(item) for item in module)
    if isinstance(module, dict):
        return {key: fold(value) for key, value in module.items()}
    return module


def _identity(inputs, training):
    """Stands where a folded batch norm was."""
    del training
    return inputs


class _FoldedBottleneck(Bottleneck):
    def __init__(self, unit):
        tf.Module.__init__(self, name=None)
        self.shortcut_conv = None
        if unit.shortcut_conv is not None:
            self.shortcut_conv = FoldedConv2D(unit.shortcut_conv, unit.shortcut_bn)
            self.shortcut_bn = _identity
        self.conv1, self.bn1 = FoldedConv2D(unit.conv1, unit.bn1), _identity
        self.conv2, self.bn2 = FoldedConv2D(unit.conv2, unit.bn2), _identity
        self.conv3, self.bn3 = FoldedConv2D(unit.conv3, unit.bn3), _identity


class _FoldedResNetV1(ResNetV1):
    def __init__(self, backbone):
        tf.Module.__init__(self, name=None)
        self.depth = backbone.depth
        self.multi_grid = backbone.multi_grid
        self.scope = backbone.scope
        if getattr(backbone, 'root', None):
            self.root = [fold(conv) for conv in backbone.root]
        else:
            self.conv1, self.bn1 = FoldedConv2D(backbone.conv1, backbone.bn1), _identity
        self.blocks = [[_FoldedBottleneck(unit) for unit in units] for units in backbone.blocks]
        self.out_channels = backbone.out_channels


class _FoldedASPP(ASPP):
    def __init__(self, aspp):
        tf.Module.__init__(self, name=None)
        self.rates_at_os16 = aspp.rates_at_os16
        self.separable = aspp.separable
        self.pooling_first = aspp.pooling_first
        self.branches = [fold(branch) if isinstance(branch, SeparableConvBN)
                         else (FoldedConv2D(*branch), _identity) for branch in aspp.branches]
        self.pool_conv, self.pool_bn = FoldedConv2D(aspp.pool_conv, aspp.pool_bn), _identity
        self.projection = FoldedConv2D(aspp.projection, aspp.projection_bn)
        self.projection_bn = _identity


class FoldedDeepLabV3(DeepLabV3):
    """A `DeepLabV3` for inference, with every batch norm folded into its convolution.

    It reads the model's weights and moving statistics once, eagerly, at construction (later
    changes to the model do not reach it) and has the model's call signature, so it can stand
    wherever the model is called for inference (`MultiScalePredictor`, export). Its logits equal
    the model's at `training=False` up to float32 rounding, at any output stride.

    Variables: `<scope>/weights` and `<scope>/biases` for every convolution, under the model's
    scopes; no batch norm.

    Args:
        model: a `DeepLabV3`.
    """

    def __init__(self, model):
        tf.Module.__init__(self, name='deeplabv3_folded')
        for name, value in vars(model).items():
            if not name.startswith('_'):
                setattr(self, name, fold(value))

    def __call__(self, images, training=False, output_stride=None):
        """Logits [B, ceil(H / OS), ceil(W / OS), num_classes] of normalised images [B, H, W, 3].

        Raises:
            ValueError: for `training=True`; a folded network has no batch norm to train.
        """
        if training:
            raise ValueError('FoldedDeepLabV3 is for inference only: call it with training=False')
        return super().__call__(images, training=False, output_stride=output_stride)
