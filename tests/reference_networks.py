"""The variable lists (names and shapes) of the reference DeepLab's networks, written from the
reference's own code, not from this project's model: research/deeplab/model.py (ASPP, decoder,
logits), core/feature_extractor.py (which network, its scope, the decoder end points, MobileNetV2's
depth rounding), core/xception.py, core/resnet_v1_beta.py, and slim's nets/mobilenet/
{mobilenet_v2.py,mobilenet.py,conv_blocks.py}.

Every convolution followed by batch norm has `weights` (or `depthwise_weights`, [k, k, C, 1]) and
`BatchNorm/{beta,gamma,moving_mean,moving_variance}` (scale=True everywhere the reference builds
them); the logits have `weights` and `biases`.

`tests/fixtures/reference_variables.json` keeps the lists of the published configurations; after a
deliberate change here, `python tests/reference_networks.py` writes it again.
"""
import json
import os

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures',
                       'reference_variables.json')
BN = ('beta', 'gamma', 'moving_mean', 'moving_variance')


def _conv(tensors, scope, kernel, cin, cout):
    tensors[f'{scope}/weights'] = [kernel, kernel, cin, cout]
    for name in BN:
        tensors[f'{scope}/BatchNorm/{name}'] = [cout]


def _depthwise(tensors, scope, cin):
    tensors[f'{scope}/depthwise_weights'] = [3, 3, cin, 1]
    for name in BN:
        tensors[f'{scope}/BatchNorm/{name}'] = [cin]


def _split_separable(tensors, scope, cin, cout):
    """model.py `_split_separable_conv2d`, xception.py `separable_conv2d_same` (not
    regularize_depthwise): `<scope>_depthwise` then `<scope>_pointwise`, each with batch norm."""
    _depthwise(tensors, f'{scope}_depthwise', cin)
    _conv(tensors, f'{scope}_pointwise', 1, cin, cout)


def _make_divisible(v, divisor, min_value=None):
    """conv_blocks.py / mobilenet.py `_make_divisible`."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


# mobilenet_v2.py V2_DEF spec after the first conv: (stride, num_outputs), expansion 6 except
# the first block's (expand_input(1, divisible_by=1)).
_V2_SPEC = [(1, 16), (2, 24), (1, 24), (2, 32), (1, 32), (1, 32), (2, 64), (1, 64), (1, 64),
            (1, 64), (1, 96), (1, 96), (1, 96), (2, 160), (1, 160), (1, 160), (1, 320)]


def mobilenet_v2(depth_multiplier=1.0, divisible=None):
    """feature_extractor.py `_mobilenet_v2`: divisible_by and min_depth 8 at multiplier 1, else
    1 (slim's own `mobilenet_v2_050` keeps mobilenet.py's default 8: `divisible=8`); up to
    `layer_18` (no `Conv_1`). Returns (tensors, {end point: channels}, output depth)."""
    divisible = divisible or (8 if depth_multiplier == 1.0 else 1)
    depth = lambda d: _make_divisible(d * depth_multiplier, divisible, divisible)
    tensors, channels = {}, {}
    first = depth(32)
    _conv(tensors, 'MobilenetV2/Conv', 3, 3, first)
    prev = first
    for i, (_, outputs) in enumerate(_V2_SPEC):
        scope = 'MobilenetV2/expanded_conv' + (f'_{i}' if i else '')
        inner = _make_divisible(prev * (1 if i == 0 else 6), 1 if i == 0 else 8)
        if inner > prev:
            _conv(tensors, f'{scope}/expand', 1, prev, inner)
        _depthwise(tensors, f'{scope}/depthwise', inner)
        out = depth(outputs)
        _conv(tensors, f'{scope}/project', 1, inner, out)
        channels[f'layer_{i + 2}/depthwise_output'] = inner
        prev = out
    return tensors, channels, prev


# xception.py xception_65: (block, depth_list, skip_connection_type, num_units).
_XCEPTION_65 = [('entry_flow/block1', [128, 128, 128], 'conv', 1),
                ('entry_flow/block2', [256, 256, 256], 'conv', 1),
                ('entry_flow/block3', [728, 728, 728], 'conv', 1),
                ('middle_flow/block1', [728, 728, 728], 'sum', 16),
                ('exit_flow/block1', [728, 1024, 1024], 'conv', 1),
                ('exit_flow/block2', [1536, 1536, 2048], 'none', 1)]


def xception_65():
    tensors, channels = {}, {}
    _conv(tensors, 'xception_65/entry_flow/conv1_1', 3, 3, 32)
    _conv(tensors, 'xception_65/entry_flow/conv1_2', 3, 32, 64)
    prev = 64
    for block, depths, skip, units in _XCEPTION_65:
        for unit in range(1, units + 1):
            scope = f'xception_65/{block}/unit_{unit}/xception_module'
            cin = prev
            for i, d in enumerate(depths):
                _split_separable(tensors, f'{scope}/separable_conv{i + 1}', cin, d)
                cin = d
            if skip == 'conv':
                _conv(tensors, f'{scope}/shortcut', 1, prev, depths[-1])
            channels[f'{block}/unit_{unit}/xception_module/separable_conv2_pointwise'] = \
                depths[1]
            prev = depths[-1]
    return tensors, channels, prev


_RESNET_UNITS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def resnet_v1_beta(depth):
    """resnet_v1_beta.py: root conv1_1 (3x3/2, 64), conv1_2 (64), conv1_3 (128); bottlenecks
    with base depths 64, 128, 256, 512, a shortcut conv where the depth changes."""
    scope, tensors, channels = f'resnet_v1_{depth}', {}, {}
    _conv(tensors, f'{scope}/conv1_1', 3, 3, 64)
    _conv(tensors, f'{scope}/conv1_2', 3, 64, 64)
    _conv(tensors, f'{scope}/conv1_3', 3, 64, 128)
    prev = 128
    for block, (units, base) in enumerate(zip(_RESNET_UNITS[depth], (64, 128, 256, 512)), 1):
        for unit in range(1, units + 1):
            unit_scope = f'{scope}/block{block}/unit_{unit}/bottleneck_v1'
            if prev != 4 * base:
                _conv(tensors, f'{unit_scope}/shortcut', 1, prev, 4 * base)
            _conv(tensors, f'{unit_scope}/conv1', 1, prev, base)
            _conv(tensors, f'{unit_scope}/conv2', 3, base, base)
            _conv(tensors, f'{unit_scope}/conv3', 1, base, 4 * base)
            channels[f'block{block}/unit_{unit}/bottleneck_v1/conv3'] = 4 * base
            prev = 4 * base
    return tensors, channels, prev


# feature_extractor.py networks_to_feature_maps[...][DECODER_END_POINTS][4]
DECODER_END_POINT_AT_4 = {
    'mobilenet_v2': 'layer_4/depthwise_output',
    'xception_65': 'entry_flow/block2/unit_1/xception_module/separable_conv2_pointwise',
    'resnet_v1_50_beta': 'block1/unit_2/bottleneck_v1/conv3',
    'resnet_v1_101_beta': 'block1/unit_2/bottleneck_v1/conv3'}


def deeplab(variant, num_classes, atrous_branches, separable, decoder, depth_multiplier=1.0):
    """The whole network of model.py: backbone, ASPP (`image_pooling`, `aspp0`, `aspp<i>`,
    `concat_projection`, 256 each), the decoder at output stride 4 (`decoder/
    feature_projection0` of 48, `decoder_conv{0,1}` separable of 256), `logits/semantic`."""
    if variant == 'mobilenet_v2':
        tensors, channels, features = mobilenet_v2(depth_multiplier)
    elif variant == 'xception_65':
        tensors, channels, features = xception_65()
    else:
        tensors, channels, features = resnet_v1_beta(int(variant.split('_')[2]))
    _conv(tensors, 'image_pooling', 1, features, 256)
    _conv(tensors, 'aspp0', 1, features, 256)
    for i in range(1, atrous_branches + 1):
        if separable:
            _split_separable(tensors, f'aspp{i}', features, 256)
        else:
            _conv(tensors, f'aspp{i}', 3, features, 256)
    _conv(tensors, 'concat_projection', 1, 256 * (2 + atrous_branches), 256)
    head = 256
    if decoder:
        _conv(tensors, 'decoder/feature_projection0', 1,
              channels[DECODER_END_POINT_AT_4[variant]], 48)
        _split_separable(tensors, 'decoder/decoder_conv0', 256 + 48, 256)
        _split_separable(tensors, 'decoder/decoder_conv1', 256, 256)
    tensors['logits/semantic/weights'] = [1, 1, head, num_classes]
    tensors['logits/semantic/biases'] = [num_classes]
    return tensors


# The published checkpoints (g3doc/model_zoo.md) and the beta ResNets as configured with the
# decoder: name -> (variant, classes, atrous branches, separable ASPP, decoder, multiplier).
PUBLISHED = {
    'mobilenetv2_coco_voc_trainaug': ('mobilenet_v2', 21, 0, False, False, 1.0),
    'mobilenetv2_dm05_coco_voc_trainaug': ('mobilenet_v2', 21, 0, False, False, 0.5),
    'mobilenetv2_coco_cityscapes_trainfine': ('mobilenet_v2', 19, 0, False, False, 1.0),
    'mobilenetv2_ade20k_train': ('mobilenet_v2', 151, 0, False, True, 1.0),
    'xception65_coco_voc_trainaug': ('xception_65', 21, 3, True, True, 1.0),
    'xception65_cityscapes_trainfine': ('xception_65', 19, 3, True, True, 1.0),
    'xception65_ade20k_train': ('xception_65', 151, 3, True, True, 1.0),
    'resnet_v1_50_beta_decoder': ('resnet_v1_50_beta', 21, 3, False, True, 1.0),
    'resnet_v1_101_beta_decoder': ('resnet_v1_101_beta', 21, 3, False, True, 1.0),
}


def published(name):
    variant, classes, branches, separable, decoder, multiplier = PUBLISHED[name]
    return deeplab(variant, classes, branches, separable, decoder, multiplier)


if __name__ == '__main__':
    os.makedirs(os.path.dirname(FIXTURE), exist_ok=True)
    with open(FIXTURE, 'w') as f:
        json.dump({name: published(name) for name in PUBLISHED}, f, indent=0, sort_keys=True)
        f.write('\n')
    print(f'wrote {FIXTURE}')
