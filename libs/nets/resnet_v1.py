"""ResNet-v1 backbone with atrous convolution and multi-grid, laid out exactly like TF-slim's.

Paper, section 3.2: strides beyond the target output stride become atrous rates, so block4 (and
block3 at output stride 8) keeps its resolution while its receptive field grows. Table 3's
multi-grid multiplies block4's unit rates by (r1, r2, r3).

Layout (slim `resnet_v1`): a 7x7/2 conv and a 3x3/2 max pool (stride 4), then four blocks of
bottleneck units. A unit is 1x1 -> 3x3 (carrying the stride and rate) -> 1x1, plus a shortcut that is
a 1x1 conv where the depth changes, else the identity subsampled by a 1x1 max pool. Blocks 1-3
downsample in their last unit; block4 does not.
"""
import tensorflow as tf

from libs.nets.layers import BatchNorm, Conv2D, ConvBN

# Units per block, by depth.
UNITS_PER_BLOCK = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
BOTTLENECK_DEPTHS = (64, 128, 256, 512)  # The unit outputs 4x this.
BLOCK_STRIDES = (2, 2, 2, 1)  # Applied in each block's last unit.
ROOT_STRIDE = 4  # conv1 (2) x pool1 (2).
OUTPUT_STRIDES = (8, 16, 32)
EXPANSION = 4


def unit_strides_and_rates(depth, output_stride, multi_grid):
    """Per unit (stride, rate): strides past the target output stride turn into atrous rates.

    Follows slim's `stack_blocks_dense`: once the running stride equals the target, each unit that
    would stride runs at stride 1 instead, and every later unit's rate grows by that stride. Block4's
    rates are then multiplied by `multi_grid` (paper, section 3.2, Table 3).

    Returns:
        A list per block of a list per unit of (stride, rate).
    """
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f'output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}')
    units = UNITS_PER_BLOCK[depth]
    if len(multi_grid) != units[-1]:
        raise ValueError(f'multi_grid needs one rate per unit of block4 ({units[-1]}), '
                         f'got {tuple(multi_grid)}')
    current_stride, rate, plan = ROOT_STRIDE, 1, []
    for block, (num_units, block_stride) in enumerate(zip(units, BLOCK_STRIDES)):
        unit_rates = multi_grid if block == len(units) - 1 else (1,) * num_units
        block_plan = []
        for unit in range(num_units):
            stride = block_stride if unit == num_units - 1 else 1
            if current_stride == output_stride:
                block_plan.append((1, rate * unit_rates[unit]))
                rate *= stride
            else:
                block_plan.append((stride, rate * unit_rates[unit]))
                current_stride *= stride
        plan.append(block_plan)
    return plan


class Bottleneck(tf.Module):
    """slim's `bottleneck_v1`: variables under `<scope>/bottleneck_v1/{shortcut,conv1,conv2,conv3}`."""

    def __init__(self, scope, in_channels, bottleneck_depth, rng, bn_args):
        super().__init__(name=None)
        scope = f'{scope}/bottleneck_v1'
        depth = bottleneck_depth * EXPANSION
        self.shortcut_conv = None
        if in_channels != depth:
            self.shortcut_conv = Conv2D(f'{scope}/shortcut', 1, in_channels, depth, rng)
            self.shortcut_bn = BatchNorm(f'{scope}/shortcut', depth, **bn_args)
        self.conv1 = Conv2D(f'{scope}/conv1', 1, in_channels, bottleneck_depth, rng)
        self.bn1 = BatchNorm(f'{scope}/conv1', bottleneck_depth, **bn_args)
        self.conv2 = Conv2D(f'{scope}/conv2', 3, bottleneck_depth, bottleneck_depth, rng)
        self.bn2 = BatchNorm(f'{scope}/conv2', bottleneck_depth, **bn_args)
        self.conv3 = Conv2D(f'{scope}/conv3', 1, bottleneck_depth, depth, rng)
        self.bn3 = BatchNorm(f'{scope}/conv3', depth, **bn_args)

    def __call__(self, inputs, stride, rate, training):
        """[B, H, W, in] -> [B, ceil(H / stride), ceil(W / stride), 4 * bottleneck_depth]."""
        return self.with_conv3(inputs, stride, rate, training)[0]

    def with_conv3(self, inputs, stride, rate, training):
        """(the unit's output, conv3's output after batch norm and before the sum: slim's end
        point `.../bottleneck_v1/conv3`, the reference decoder's low-level features)."""
        if self.shortcut_conv is not None:
            shortcut = self.shortcut_bn(self.shortcut_conv(inputs, stride=stride), training)
        elif stride == 1:
            shortcut = inputs
        else:
            shortcut = tf.nn.max_pool2d(inputs, 1, stride, 'SAME')  # slim's `subsample`.
        net = tf.nn.relu(self.bn1(self.conv1(inputs), training))
        net = tf.nn.relu(self.bn2(self.conv2(net, stride=stride, rate=rate), training))
        net = self.bn3(self.conv3(net), training)
        return tf.nn.relu(shortcut + net), net


class ResNetV1(tf.Module):
    """ResNet-v1 50/101/152 under the variable scope `resnet_v1_<depth>`.

    Args:
        depth: 50, 101 or 152.
        multi_grid: block4's unit rate multipliers, e.g. (1, 2, 4).
        rng: `np.random.Generator` for the initial weights.
        bn_args: keyword arguments of `BatchNorm` (decay, frozen, sync).
        beta: the reference DeepLab's beta variant (research/deeplab/core/resnet_v1_beta.py):
            the 7x7 root convolution replaced by three 3x3 ones, `conv1_1` (stride 2, 64),
            `conv1_2` (64) and `conv1_3` (128), each with batch norm and ReLU.
    """

    def __init__(self, depth, multi_grid, rng, bn_args, beta=False):
        super().__init__(name=None)
        if depth not in UNITS_PER_BLOCK:
            raise ValueError(f'depth must be one of {sorted(UNITS_PER_BLOCK)}, got {depth}')
        unit_strides_and_rates(depth, OUTPUT_STRIDES[0], multi_grid)  # Validates multi_grid.
        self.depth = depth
        self.multi_grid = tuple(multi_grid)
        self.scope = f'resnet_v1_{depth}'
        if beta:
            self.root = [ConvBN(Conv2D(f'{self.scope}/{name}', 3, i, o, rng), bn_args,
                                tf.nn.relu)
                         for name, i, o in (('conv1_1', 3, 64), ('conv1_2', 64, 64),
                                            ('conv1_3', 64, 128))]
            in_channels = 128
        else:
            self.conv1 = Conv2D(f'{self.scope}/conv1', 7, 3, 64, rng)
            self.bn1 = BatchNorm(f'{self.scope}/conv1', 64, **bn_args)
            in_channels = 64
        self.blocks = []
        for block, (num_units, bottleneck_depth) in enumerate(
                zip(UNITS_PER_BLOCK[depth], BOTTLENECK_DEPTHS)):
            units = []
            for unit in range(num_units):
                units.append(Bottleneck(f'{self.scope}/block{block + 1}/unit_{unit + 1}',
                                        in_channels, bottleneck_depth, rng, bn_args))
                in_channels = bottleneck_depth * EXPANSION
            self.blocks.append(units)
        self.out_channels = in_channels

    def __call__(self, images, output_stride, training):
        """Runs the backbone.

        Args:
            images: normalised images [B, H, W, 3].
            output_stride: 8, 16 or 32.
            training: whether batch norm uses batch statistics (unless frozen).
        Returns:
            (features [B, ceil(H / OS), ceil(W / OS), 2048], endpoints), where endpoints maps
            'conv1', 'pool1', 'block1' ... 'block4' to their outputs, and
            'block<b>/unit_<u>/bottleneck_v1/conv3' to each unit's conv3 output.
        """
        plan = unit_strides_and_rates(self.depth, output_stride, self.multi_grid)
        endpoints = {}
        if getattr(self, 'root', None):
            net = self.root[0](images, training, stride=2)
            for conv in self.root[1:]:
                net = conv(net, training)
        else:
            net = tf.nn.relu(self.bn1(self.conv1(images, stride=2), training))
        endpoints['conv1'] = net
        net = tf.nn.max_pool2d(net, 3, 2, 'SAME')
        endpoints['pool1'] = net
        for block, (units, block_plan) in enumerate(zip(self.blocks, plan)):
            for index, (unit, (stride, rate)) in enumerate(zip(units, block_plan)):
                net, conv3 = unit.with_conv3(net, stride, rate, training)
                endpoints[f'block{block + 1}/unit_{index + 1}/bottleneck_v1/conv3'] = conv3
            endpoints[f'block{block + 1}'] = net
        return net, endpoints

    def low_level_channels(self, end_point):
        """The depth of a conv3 end point 'block<b>/unit_<u>/bottleneck_v1/conv3'."""
        return BOTTLENECK_DEPTHS[int(end_point[len('block')]) - 1] * EXPANSION
