"""Xception-65 as the reference DeepLab builds it (research/deeplab/core/xception.py).

The aligned Xception of Dai et al. with DeepLab's changes (Chen et al., DeepLabV3+, 2018, section
3.2): max pooling replaced by strided separable convolutions, batch norm after every depthwise
convolution. An entry flow of two convolutions (`entry_flow/conv1_1` 3x3/2 of 32, `conv1_2` 3x3
of 64) and blocks of Xception modules: three separable convolutions (`separable_conv{1,2,3}`, each
a depthwise `_depthwise` and a pointwise `_pointwise` half with batch norm, epsilon 1e-3), the
last carrying the stride, plus a shortcut: a 1x1 convolution (`shortcut`), the input itself, or
none. ReLU comes before each separable convolution, except in `exit_flow/block2`, where it comes
after each half. Strided convolutions pad like slim's `conv2d_same`.
"""
import tensorflow as tf

from libs.nets.layers import Conv2D, ConvBN, SeparableConvBN
from libs.nets.strides import strides_and_rates

SCOPE = 'xception_65'
BN_EPSILON = 1e-3
# (scope, depths of the three separable convolutions, shortcut, ReLU inside the separable
# convolutions, units, stride of the last unit).
BLOCKS = (('entry_flow/block1', (128, 128, 128), 'conv', False, 1, 2),
          ('entry_flow/block2', (256, 256, 256), 'conv', False, 1, 2),
          ('entry_flow/block3', (728, 728, 728), 'conv', False, 1, 2),
          ('middle_flow/block1', (728, 728, 728), 'sum', False, 16, 1),
          ('exit_flow/block1', (728, 1024, 1024), 'conv', False, 1, 2),
          ('exit_flow/block2', (1536, 1536, 2048), 'none', True, 1, 1))
MULTI_GRID_BLOCK = 'exit_flow/block2'  # whose units' three rates `multi_grid` sets
# Xception's own initialiser (xception_arg_scope): truncated normal 0.09 (depthwise 0.33).
INIT_STDDEVS = (0.33, 0.09)


def _relu_beside_shortcut(inputs, training):
    """ReLU of a module's input [B, H, W, C], which its shortcut takes too.

    At inference it is written as a maximum. The input is the previous module's sum; TensorFlow
    2.21's remapper fuses convolution + bias + sum + ReLU into one op even when the sum has other
    consumers (this shortcut), then fails ('fanout ... exist for missing node add_N') and leaves
    the whole graph unfused: no convolution of the network gets its bias or ReLU fused. Training
    keeps ReLU, whose gradient at 0 is 0 (the maximum's is 1).
    """
    if training:
        return tf.nn.relu(inputs)
    return tf.maximum(inputs, tf.zeros([], inputs.dtype))


class XceptionModule(tf.Module):
    """One Xception module under `<scope>/xception_module/`."""

    def __init__(self, scope, in_depth, depths, shortcut, activation_inside, rng, bn_args):
        super().__init__(name=None)
        scope = f'{scope}/xception_module'
        activation = tf.nn.relu if activation_inside else None
        self.separable = []
        for index, (depth_in, depth) in enumerate(zip((in_depth,) + tuple(depths[:-1]), depths)):
            self.separable.append(SeparableConvBN(
                f'{scope}/separable_conv{index + 1}', depth_in, depth, rng, bn_args,
                activation=activation, stddevs=INIT_STDDEVS))
        self.activation_inside = activation_inside
        self.shortcut_kind = shortcut
        self.shortcut = (ConvBN(Conv2D(f'{scope}/shortcut', 1, in_depth, depths[-1], rng,
                                       stddev=INIT_STDDEVS[1]), bn_args)
                         if shortcut == 'conv' else None)

    def __call__(self, inputs, stride, rate, unit_rates, training):
        """Returns (output, the second separable convolution's pointwise output)."""
        residual, second = inputs, None
        for index, separable in enumerate(self.separable):
            if not self.activation_inside:
                shared = index == 0 and self.shortcut_kind != 'none'
                residual = (_relu_beside_shortcut(residual, training) if shared
                            else tf.nn.relu(residual))
            residual = separable(residual, training, stride=stride if index == 2 else 1,
                                 rate=rate * unit_rates[index])
            if index == 1:
                second = residual
        if self.shortcut_kind == 'conv':
            return residual + self.shortcut(inputs, training, stride=stride), second
        if self.shortcut_kind == 'sum':
            return residual + inputs, second
        return residual, second


class Xception65(tf.Module):
    """Xception-65 under the scope `xception_65`.

    Args:
        multi_grid: the three rate multipliers of `exit_flow/block2`'s separable convolutions
            ((1, 1, 1) in every published checkpoint).
        rng: `np.random.Generator` for the initial weights.
        bn_args: keyword arguments of `BatchNorm` (decay, frozen, sync); epsilon is 1e-3.
    """

    def __init__(self, multi_grid, rng, bn_args):
        super().__init__(name=None)
        if len(multi_grid) != 3:
            raise ValueError(f'multi_grid needs one rate per separable convolution of '
                             f'{MULTI_GRID_BLOCK} (3), got {tuple(multi_grid)}')
        bn_args = dict(bn_args, epsilon=BN_EPSILON)
        self.multi_grid = tuple(multi_grid)
        conv = lambda name, i, o: Conv2D(f'{SCOPE}/entry_flow/{name}', 3, i, o, rng,
                                         stddev=INIT_STDDEVS[1])
        self.conv1_1 = ConvBN(conv('conv1_1', 3, 32), bn_args, tf.nn.relu)
        self.conv1_2 = ConvBN(conv('conv1_2', 32, 64), bn_args, tf.nn.relu)
        self.units, self.unit_names, strides, in_depth = [], [], [], 64
        for scope, depths, shortcut, inside, num_units, stride in BLOCKS:
            for unit in range(num_units):
                name = f'{scope}/unit_{unit + 1}'
                self.units.append(XceptionModule(f'{SCOPE}/{name}', in_depth, depths, shortcut,
                                                 inside, rng, bn_args))
                self.unit_names.append(name)
                strides.append(stride if unit == num_units - 1 else 1)
                in_depth = depths[-1]
        self.strides = tuple(strides)
        self.out_channels = in_depth
        # The depth of each `<unit>/xception_module/separable_conv2_pointwise` end point.
        self.pointwise_channels = {
            f'{name}/xception_module/separable_conv2_pointwise': block[1][1]
            for name, block in zip(self.unit_names, (b for b in BLOCKS for _ in range(b[4])))}

    def low_level_channels(self, end_point):
        """The depth of an end point the decoder can take (see `__call__`)."""
        return self.pointwise_channels[end_point]

    def __call__(self, images, output_stride, training):
        """[B, H, W, 3] (x / 127.5 - 1) -> (features [B, ceil(H / OS), ceil(W / OS), 2048],
        end points: each unit's output and its '<unit>/xception_module/separable_conv2_pointwise').
        """
        plan = strides_and_rates(self.strides, output_stride, initial_stride=2)
        net = self.conv1_1(images, training, stride=2)
        net = self.conv1_2(net, training)
        endpoints = {}
        for name, unit, (stride, rate) in zip(self.unit_names, self.units, plan):
            unit_rates = self.multi_grid if name.startswith(MULTI_GRID_BLOCK) else (1, 1, 1)
            net, second = unit(net, stride, rate, unit_rates, training)
            endpoints[name] = net
            endpoints[f'{name}/xception_module/separable_conv2_pointwise'] = second
        return net, endpoints
