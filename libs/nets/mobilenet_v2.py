"""MobileNetV2 (Sandler et al., 2018) as slim builds it and the reference DeepLab calls it.

slim's `mobilenet_v2.V2_DEF` (research/slim/nets/mobilenet): a 3x3/2 convolution (`Conv`), then
17 inverted residual blocks (`expanded_conv`, `expanded_conv_1`, ... `expanded_conv_16`): a 1x1
expansion (`expand`, absent in the first block), a 3x3 depthwise convolution (`depthwise`, carrying
the stride and the atrous rate) and a linear 1x1 projection (`project`), each with batch norm
(epsilon 1e-3), ReLU6 after the first two, and the input added where stride is 1 and depth kept.
The reference DeepLab takes the features of `layer_18` (the last block; `Conv_1` is not built) and
pads every convolution 'SAME'. Layer i + 1 is the i-th entry of the spec: `layer_1` is `Conv`,
`layer_2` is `expanded_conv`, `layer_4` is `expanded_conv_2`.
"""
import tensorflow as tf

from libs.nets.layers import Conv2D, ConvBN, DepthwiseConv2D
from libs.nets.strides import strides_and_rates

SCOPE = 'MobilenetV2'
BN_EPSILON = 1e-3  # slim's batch_norm default, which mobilenet's training_scope keeps.
FIRST_DEPTH = 32
# (stride, output depth, expansion factor) of each inverted residual block.
BLOCKS = ((1, 16, 1), (2, 24, 6), (1, 24, 6), (2, 32, 6), (1, 32, 6), (1, 32, 6), (2, 64, 6),
          (1, 64, 6), (1, 64, 6), (1, 64, 6), (1, 96, 6), (1, 96, 6), (1, 96, 6), (2, 160, 6),
          (1, 160, 6), (1, 160, 6), (1, 320, 6))
INIT_STDDEV = 0.09  # mobilenet's training_scope


def make_divisible(value, divisor, min_value=None):
    """slim mobilenet's `_make_divisible`: the nearest multiple of `divisor`, at least
    `min_value`, and never more than 10% below `value`."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def default_depth_divisor(depth_multiplier):
    """The reference DeepLab's rounding of the scaled depths (feature_extractor.py): multiples of
    8 at multiplier 1, none otherwise. slim's own ImageNet files round to 8 at every multiplier."""
    return 8 if depth_multiplier == 1.0 else 1


def depths(depth_multiplier, depth_divisor=None):
    """(first convolution's depth, [(stride, inner depth, output depth) per block]).

    Each depth times the multiplier is rounded to a multiple of `depth_divisor` (and at least
    it): the reference DeepLab's 1 at multipliers other than 1, so that at 0.5 every depth is
    exactly halved; slim's ImageNet files' 8. Expansions are rounded to multiples of 8 as slim's
    `expand_input_by_factor` does (the first block's, to 1).
    """
    divisor = depth_divisor or default_depth_divisor(depth_multiplier)
    scaled = lambda d: make_divisible(d * depth_multiplier, divisor, divisor)
    first = scaled(FIRST_DEPTH)
    blocks, in_depth = [], first
    for stride, out_depth, expansion in BLOCKS:
        inner = make_divisible(in_depth * expansion, 8 if expansion != 1 else 1)
        blocks.append((stride, inner, scaled(out_depth)))
        in_depth = scaled(out_depth)
    return first, blocks


def depth_of_checkpoint(shapes):
    """(depth multiplier, depth divisor) of a checkpoint's MobileNetV2, from its variable shapes
    ({name: shape}): the multiplier from `layer_18`'s depth over 320 (exact at 1.0, 0.75, 0.5 and
    0.35 with either rounding), the divisor (1 or 8) whose depths its `expanded_conv_1` has.
    (None, None) without a MobileNetV2; a divisor of None when neither rounding fits (loading
    then names the tensors that differ)."""
    last = shapes.get(f'{SCOPE}/expanded_conv_16/project/weights')
    if last is None:
        return None, None
    depth_multiplier = list(last)[-1] / BLOCKS[-1][1]
    found = list(shapes.get(f'{SCOPE}/expanded_conv_1/project/weights', [0]))[-1]
    default = default_depth_divisor(depth_multiplier)
    for divisor in (default, 9 - default):
        if depths(depth_multiplier, divisor)[1][1][2] == found:
            return depth_multiplier, divisor
    return depth_multiplier, None


class InvertedResidual(tf.Module):
    """slim's `expanded_conv` under `<scope>/{expand,depthwise,project}`."""

    def __init__(self, scope, in_depth, inner_depth, out_depth, rng, bn_args):
        super().__init__(name=None)
        conv = lambda name, k, i, o: Conv2D(f'{scope}/{name}', k, i, o, rng, padding='same',
                                            stddev=INIT_STDDEV)
        self.expand = (ConvBN(conv('expand', 1, in_depth, inner_depth), bn_args, tf.nn.relu6)
                       if inner_depth > in_depth else None)
        self.depthwise = ConvBN(DepthwiseConv2D(f'{scope}/depthwise', 3, inner_depth, rng,
                                                padding='same', stddev=INIT_STDDEV),
                                bn_args, tf.nn.relu6)
        self.project = ConvBN(conv('project', 1, inner_depth, out_depth), bn_args)
        self.residual = in_depth == out_depth

    def __call__(self, inputs, stride, rate, training):
        """Returns (output [B, ceil(H / stride), ceil(W / stride), out], depthwise output)."""
        net = self.expand(inputs, training) if self.expand is not None else inputs
        depthwise = self.depthwise(net, training, stride=stride, rate=rate)
        net = self.project(depthwise, training)
        if self.residual and stride == 1:
            net = net + inputs
        return net, depthwise


class MobileNetV2(tf.Module):
    """MobileNetV2 up to `layer_18`, under the scope `MobilenetV2`.

    Args:
        depth_multiplier: scales every layer's depth (1.0 and 0.5 are published).
        rng: `np.random.Generator` for the initial weights.
        bn_args: keyword arguments of `BatchNorm` (decay, frozen, sync); epsilon is 1e-3.
        depth_divisor: the rounding of the scaled depths (`depths`); None: the reference's.
    """

    def __init__(self, depth_multiplier, rng, bn_args, depth_divisor=None):
        super().__init__(name=None)
        if not depth_multiplier > 0:
            raise ValueError(f'depth_multiplier must be positive, got {depth_multiplier}')
        bn_args = dict(bn_args, epsilon=BN_EPSILON)
        self.depth_multiplier = depth_multiplier
        first, plan = depths(depth_multiplier, depth_divisor)
        self.conv = ConvBN(Conv2D(f'{SCOPE}/Conv', 3, 3, first, rng, padding='same',
                                  stddev=INIT_STDDEV), bn_args, tf.nn.relu6)
        self.blocks, in_depth = [], first
        for index, (_, inner, out_depth) in enumerate(plan):
            name = 'expanded_conv' + (f'_{index}' if index else '')
            self.blocks.append(InvertedResidual(f'{SCOPE}/{name}', in_depth, inner, out_depth,
                                                rng, bn_args))
            in_depth = out_depth
        self.strides = (2,) + tuple(stride for stride, _, _ in plan)
        self.out_channels = in_depth
        # The depth of each `layer_<n>/depthwise_output` (n = 2 ... 18).
        self.depthwise_channels = {f'layer_{i + 2}/depthwise_output': inner
                                   for i, (_, inner, _) in enumerate(plan)}

    def low_level_channels(self, end_point):
        """The depth of an end point the decoder can take (see `__call__`)."""
        return self.depthwise_channels[end_point]

    def __call__(self, images, output_stride, training):
        """[B, H, W, 3] (x / 127.5 - 1) -> (features [B, ceil(H / OS), ceil(W / OS), 320 * dm],
        end points: 'layer_<n>' and 'layer_<n>/depthwise_output')."""
        plan = strides_and_rates(self.strides, output_stride)
        (stride, _), plan = plan[0], plan[1:]
        net = self.conv(images, training, stride=stride)
        endpoints = {'layer_1': net}
        for index, (block, (stride, rate)) in enumerate(zip(self.blocks, plan)):
            net, depthwise = block(net, stride, rate, training)
            endpoints[f'layer_{index + 2}'] = net
            endpoints[f'layer_{index + 2}/depthwise_output'] = depthwise
        return net, endpoints
