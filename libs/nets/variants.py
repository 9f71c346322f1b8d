"""The DeepLab family behind one table: a variant's name gives its backbone builder, input
preprocessing, checkpoint scope, decoder end points and default head (as timm's `create_model`,
Model Garden's backbone factory and the reference's `feature_extractor` tables do).

Names are the reference's `--model_variant` values. Scripts, loaders, export and the benchmark
read this table; none of them branches on a variant's name.
"""
import dataclasses
from typing import Callable, Optional

from libs.nets.aspp import RATES_AT_OS16
from libs.nets import mobilenet_v2
from libs.nets.mobilenet_v2 import MobileNetV2
from libs.utils.preprocessing import IMAGENET_MEAN, UNIT_RANGE, Preprocessing
from libs.nets.resnet_v1 import UNITS_PER_BLOCK, ResNetV1
from libs.nets.variant_names import VARIANT_NAMES
from libs.nets.xception import Xception65


@dataclasses.dataclass(frozen=True)
class Variant:
    """One network of the family.

    Attributes:
        name: the reference's model_variant, e.g. 'mobilenet_v2'.
        scope: the backbone's variable scope in checkpoints, e.g. 'MobilenetV2'.
        signature: a variable only this network has (its first convolution's weights), by which
            a checkpoint is recognised as holding it.
        preprocessing: what the backbone expects of its input pixels.
        build: (multi_grid, depth_multiplier, depth_divisor, rng, bn_args) -> backbone, a
            module called as
            `backbone(images, output_stride, training) -> (features, end points)`, with
            `out_channels` and `low_level_channels(end_point)`.
        decoder_end_points: {decoder output stride: the backbone end point the decoder takes}
            (the reference's `decoder_end_points`).
        multi_grid: the default rate multipliers of the last block; None where the network has
            none (MobileNetV2).
        atrous_rates: the default ASPP atrous rates at output stride 16; () for none.
        aspp_separable: whether the default ASPP's atrous branches are separable.
        decoder_output_stride: the default decoder (None: no decoder).
        imagenet: the ImageNet checkpoint `--imagenet` takes for it, and where it comes from.
        depth_multipliers: the depth multipliers it takes.
        imagenet_left_out: {checkpoint name prefix: why} for the parts of its ImageNet network,
            beyond `<scope>/logits/`, that DeepLab does not build.
        num_layers: a ResNet's depth (config's `num_layers`), else None.
        default_depth_divisor: depth multiplier -> the rounding of the scaled depths, for a
            network that has a depth multiplier, else None.
        depth_of_checkpoint: {name: shape} -> (depth multiplier, depth divisor) of a
            checkpoint of this network, for a network that has a depth multiplier, else None.
        dropout_keep_prob: the default keep probability of the dropout after ASPP in training:
            the reference's 0.9, or 1.0 (none) for slim's ResNets, which reproduce the paper.
    """
    name: str
    scope: str
    signature: str
    preprocessing: Preprocessing
    build: Callable
    decoder_end_points: dict
    multi_grid: Optional[tuple]
    atrous_rates: tuple
    aspp_separable: bool
    decoder_output_stride: Optional[int]
    imagenet: str
    depth_multipliers: tuple = (1.0,)
    imagenet_left_out: tuple = ()
    num_layers: Optional[int] = None
    default_depth_divisor: Optional[Callable] = None
    depth_of_checkpoint: Optional[Callable] = None
    dropout_keep_prob: float = 0.9


def _resnet_end_points(depth):
    """The last unit of blocks 1-3 before they stride, e.g. 'block1/unit_2/bottleneck_v1/conv3'
    (the reference lists these for 50 and 101; 152 follows the same rule)."""
    units = UNITS_PER_BLOCK[depth]
    return {4 * 2 ** block: f'block{block + 1}/unit_{units[block] - 1}/bottleneck_v1/conv3'
            for block in range(3)}


def _resnet(depth, beta):
    def build(multi_grid, depth_multiplier, depth_divisor, rng, bn_args):
        del depth_multiplier, depth_divisor
        return ResNetV1(depth, multi_grid, rng, bn_args, beta=beta)
    return build


def _mobilenet_v2(multi_grid, depth_multiplier, depth_divisor, rng, bn_args):
    del multi_grid
    return MobileNetV2(depth_multiplier, rng, bn_args, depth_divisor)


def _xception_65(multi_grid, depth_multiplier, depth_divisor, rng, bn_args):
    del depth_multiplier, depth_divisor
    return Xception65(multi_grid, rng, bn_args)


def _table():
    table = {}
    for depth in UNITS_PER_BLOCK:
        name = f'resnet_v1_{depth}'
        table[name] = Variant(name, name, f'{name}/conv1/weights', IMAGENET_MEAN,
                              _resnet(depth, False),
                              _resnet_end_points(depth), (1, 2, 4), RATES_AT_OS16, False, None,
                              f'{name}.ckpt (TF-slim {name}_2016_08_28.tar.gz)',
                              num_layers=depth, dropout_keep_prob=1.0)
    for depth in (50, 101):
        name = f'resnet_v1_{depth}_beta'
        table[name] = Variant(name, f'resnet_v1_{depth}', f'resnet_v1_{depth}/conv1_1/weights',
                              UNIT_RANGE, _resnet(depth, True),
                              _resnet_end_points(depth), (1, 2, 4), RATES_AT_OS16, False, None,
                              f'model.ckpt (the reference DeepLab\'s '
                              f'resnet_v1_{depth}_2018_05_04.tar.gz)',
                              num_layers=depth)
    table['mobilenet_v2'] = Variant(
        'mobilenet_v2', 'MobilenetV2', 'MobilenetV2/Conv/weights', UNIT_RANGE, _mobilenet_v2,
        {4: 'layer_4/depthwise_output', 8: 'layer_7/depthwise_output',
         16: 'layer_14/depthwise_output'}, None, (), False, None,
        'mobilenet_v2_1.0_224.ckpt (TF-slim mobilenet_v2_1.0_224.tgz; _0.5_224 at 0.5)',
        depth_multipliers=(1.0, 0.75, 0.5, 0.35),
        imagenet_left_out=(('MobilenetV2/Logits/', 'the 1001-class ImageNet classifier'),
                           ('MobilenetV2/Conv_1/', 'layer_19, the 1x1 convolution before the '
                            'classifier; DeepLab takes the features of layer_18')),
        default_depth_divisor=mobilenet_v2.default_depth_divisor,
        depth_of_checkpoint=mobilenet_v2.depth_of_checkpoint)
    table['xception_65'] = Variant(
        'xception_65', 'xception_65', 'xception_65/entry_flow/conv1_1/weights', UNIT_RANGE,
        _xception_65,
        {stride: f'{unit}/unit_1/xception_module/separable_conv2_pointwise'
         for stride, unit in ((4, 'entry_flow/block2'), (8, 'entry_flow/block3'),
                              (16, 'exit_flow/block1'))},
        (1, 1, 1), RATES_AT_OS16, True, 4,
        'model.ckpt (the reference DeepLab\'s deeplabv3_xception_2018_01_04.tar.gz)')
    return table


VARIANTS = _table()
if tuple(VARIANTS) != VARIANT_NAMES:
    raise ImportError(f'variant_names.VARIANT_NAMES {VARIANT_NAMES} is not the table\'s '
                      f'{tuple(VARIANTS)}')


def get(name):
    """The `Variant` called `name`; ValueError naming the known ones otherwise."""
    if name not in VARIANTS:
        raise ValueError(f'unknown model variant {name!r}; known: {", ".join(VARIANTS)}')
    return VARIANTS[name]
