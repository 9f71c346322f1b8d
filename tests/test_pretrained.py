"""ImageNet import: checkpoints with the exact variable list of TF-slim's public resnet_v1_{50,101,152}
files load completely, by value, and every checkpoint that does not fit is refused without touching
the model."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from libs.nets.deeplabv3 import DeepLabV3
from libs.nets.pretrained import LOGITS_REASON, MEAN_RGB_REASON, load_slim_backbone
from libs.nets.resnet_v1 import ResNetV1

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAST_WEIGHTS = 'resnet_v1_50/block4/unit_3/bottleneck_v1/conv3/weights'
# slim's nets/resnet_v1.py: resnet_v1_block(scope, base_depth, num_units) for each depth.
SLIM_UNITS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
SLIM_BASE_DEPTHS = (64, 128, 256, 512)


def slim_resnet_v1_checkpoint(depth):
    """{name: (shape, dtype)} of the public `resnet_v1_<depth>_2016_08_28` checkpoint, written from
    slim's `resnet_v1.py` and `resnet_utils.py`, not from our model.

    Root: `conv2d_same(64, 7, scope='conv1')`. Each block's units are `bottleneck` with depth
    4 x base_depth; a unit has a `shortcut` 1x1 conv only where its input depth differs from its
    output depth (else an identity or max-pool subsample, no variables), then conv1 1x1, conv2 3x3,
    conv3 1x1. `resnet_arg_scope` gives every conv `normalizer_fn=batch_norm` with scale=True, so
    `weights` and `BatchNorm/{beta, gamma, moving_mean, moving_variance}`, and no `biases`. The
    classifier `logits` is a 1x1 conv with biases and no batch norm. Beside the network the files
    hold `global_step` (int64 scalar) and `resnet_v1_<depth>/mean_rgb` (float32 [3]), as loaders
    written for them show (they set aside exactly those two and the logits); no optimizer slots.
    """
    scope = f'resnet_v1_{depth}'
    tensors = {}

    def conv(name, kernel, cin, cout):
        tensors[f'{name}/weights'] = ((kernel, kernel, cin, cout), tf.float32)
        for variable in ('beta', 'gamma', 'moving_mean', 'moving_variance'):
            tensors[f'{name}/BatchNorm/{variable}'] = ((cout,), tf.float32)

    conv(f'{scope}/conv1', 7, 3, 64)
    depth_in = 64
    for block, (units, base) in enumerate(zip(SLIM_UNITS[depth], SLIM_BASE_DEPTHS), start=1):
        for unit in range(1, units + 1):
            unit_scope = f'{scope}/block{block}/unit_{unit}/bottleneck_v1'
            if depth_in != 4 * base:
                conv(f'{unit_scope}/shortcut', 1, depth_in, 4 * base)
            conv(f'{unit_scope}/conv1', 1, depth_in, base)
            conv(f'{unit_scope}/conv2', 3, base, base)
            conv(f'{unit_scope}/conv3', 1, base, 4 * base)
            depth_in = 4 * base
    tensors.update(slim_extras(depth))
    return tensors


def slim_extras(depth):
    """The tensors of the public checkpoint that are not backbone variables."""
    scope = f'resnet_v1_{depth}'
    return {'global_step': ((), tf.int64), f'{scope}/mean_rgb': ((3,), tf.float32),
            f'{scope}/logits/weights': ((1, 1, 2048, 1000), tf.float32),
            f'{scope}/logits/biases': ((1000,), tf.float32)}


def slim_values(depth, seed=0):
    """Seeded values for the whole checkpoint; moving variances are positive, mean_rgb is
    slim's ImageNet mean."""
    rng = np.random.default_rng(seed)
    values = {}
    for name, (shape, dtype) in slim_resnet_v1_checkpoint(depth).items():
        if name == 'global_step':
            values[name] = np.int64(1_000_000)
        elif name.endswith('/mean_rgb'):
            values[name] = np.array([123.68, 116.78, 103.94], np.float32)
        else:
            values[name] = rng.standard_normal(shape, dtype=np.float32)
        if name.endswith('moving_variance'):
            values[name] = np.abs(values[name]) + 0.5
        assert values[name].dtype == dtype.as_numpy_dtype and values[name].shape == shape
    return values


BACKBONE = {name: shape for name, (shape, _) in slim_resnet_v1_checkpoint(50).items()
            if name not in slim_extras(50)}
EXTRAS = slim_extras(50)


def write_checkpoint(prefix, tensors, v1=True):
    """Writes a name-based TF1 checkpoint: V1 (one file, as in slim's 2016 tarballs) or V2."""
    names = sorted(tensors)
    values = [tf.constant(tensors[n]) for n in names]
    if v1:
        tf.raw_ops.Save(filename=prefix, tensor_names=names, data=values)
    else:
        tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[''] * len(names),
                          tensors=values)
    return prefix


@pytest.fixture(scope='module')
def slim_tensors():
    """The values of the whole slim resnet_v1_50 file."""
    return slim_values(50)


@pytest.fixture(scope='module')
def slim_checkpoint(slim_tensors, tmp_path_factory):
    return write_checkpoint(str(tmp_path_factory.mktemp('slim') / 'resnet_v1_50.ckpt'),
                            slim_tensors)


@pytest.fixture(scope='module')
def model50():
    """One depth-50 model for the refusal tests: each checks it is left unchanged. No test loads
    into it successfully, so a loader that assigned before refusing would change it."""
    return DeepLabV3(num_classes=21, depth=50, seed=1)


def snapshot(module, slim_tensors=None):
    """All variable values; with `slim_tensors`, first checks that none of them is loaded yet."""
    values = {v.name: v.numpy().copy() for v in module.variables}
    for name, value in values.items():
        assert slim_tensors is None or not np.array_equal(value, slim_tensors.get(name[:-2])), name
    return values


def assert_unchanged(module, before):
    after = snapshot(module)
    assert after.keys() == before.keys()
    for name in before:
        assert np.array_equal(after[name], before[name]), name


# Parameters of ResNet-v1 50/101/152 with the 1000-class classifier, as torchvision publishes them
# (the same convolutions, batch-norm scale and offset, no conv biases): 25,557,032, 44,549,160,
# 60,192,808.
PUBLISHED_PARAMETERS = {50: 25_557_032, 101: 44_549_160, 152: 60_192_808}


@pytest.mark.parametrize('depth,convs', [(50, 53), (101, 104), (152, 155)])
def test_slim_spec_matches_the_published_networks(depth, convs):
    """1 root conv, 3 per unit, 4 shortcuts; with the classifier, the published parameter count
    (the moving statistics and the extras are not parameters)."""
    tensors = slim_resnet_v1_checkpoint(depth)
    assert len(tensors) == 5 * convs + 4
    scope = f'resnet_v1_{depth}'
    shortcuts = sorted(n for n in tensors if '/shortcut/weights' in n)
    assert shortcuts == [f'{scope}/block{b}/unit_1/bottleneck_v1/shortcut/weights'
                         for b in (1, 2, 3, 4)]
    assert tensors[f'{scope}/block3/unit_1/bottleneck_v1/shortcut/weights'][0] == (1, 1, 512, 1024)
    assert not [n for n in tensors if n.endswith('/biases') and '/logits/' not in n]
    parameters = sum(int(np.prod(shape)) for name, (shape, _) in tensors.items()
                     if not name.endswith(('moving_mean', 'moving_variance', 'mean_rgb'))
                     and name != 'global_step')
    assert parameters == PUBLISHED_PARAMETERS[depth]


@pytest.mark.parametrize('depth', [50, 101, 152])
def test_every_backbone_value_arrives_from_slim_variable_list(depth, tmp_path):
    """The exact variable list of slim's public file, extras included, loads: every backbone
    variable takes the checkpoint's value, the head keeps its own, and the report lists what was
    left out and why."""
    scope = f'resnet_v1_{depth}'
    values = slim_values(depth)
    path = write_checkpoint(str(tmp_path / f'{scope}.ckpt'), values)
    model = DeepLabV3(num_classes=21, depth=depth, seed=0)
    head_before = {v.name: v.numpy().copy() for v in model.variables
                   if not v.name.startswith(f'{scope}/')}
    assert len(head_before) == 6 * 5 + 2  # 6 ASPP convs with batch norm; logits weights, biases.

    report = load_slim_backbone(model.backbone, path)

    extras = slim_extras(depth)
    backbone = sorted(set(values) - set(extras))
    variables = {v.name[:-2]: v for v in model.backbone.variables}
    assert sorted(variables) == backbone
    for name in backbone:
        assert np.array_equal(variables[name].numpy(), values[name]), name
    assert report.loaded == len(backbone)
    assert report.left_out_names == sorted(extras)
    reasons = {g.pattern: g.reason for g in report.left_out}
    assert reasons == {f'{scope}/logits/*': LOGITS_REASON, 'global_step': 'training state',
                       f'{scope}/mean_rgb': MEAN_RGB_REASON}
    summary = report.summary()
    for text in (f'Loaded {len(backbone)} {scope} variables', 'Left out 4 checkpoint tensors',
                 f'{scope}/logits/* (2): the 1000-class ImageNet classifier',
                 'global_step (1): training state', f'{scope}/mean_rgb (1): the RGB mean'):
        assert text in summary, summary
    head_after = {v.name: v.numpy() for v in model.variables
                  if not v.name.startswith(f'{scope}/')}
    for name, value in head_before.items():
        assert np.array_equal(head_after[name], value), name


def test_v2_checkpoint_in_a_directory_with_optimizer_slots(slim_tensors, tmp_path):
    """A re-saved V2 checkpoint, named by its directory's `checkpoint` state file; slots and
    everything outside the backbone are left out and listed."""
    extra = {'resnet_v1_50/conv1/weights/Momentum': slim_tensors['resnet_v1_50/conv1/weights'],
             'aspp0/weights': np.zeros([1, 1, 2048, 256], np.float32)}
    write_checkpoint(str(tmp_path / 'model.ckpt-7'), {**slim_tensors, **extra}, v1=False)
    (tmp_path / 'checkpoint').write_text('model_checkpoint_path: "model.ckpt-7"\n')
    backbone = ResNetV1(50, (1, 2, 4), np.random.default_rng(2), {})
    report = load_slim_backbone(backbone, str(tmp_path))
    assert report.loaded == 265
    assert report.checkpoint == str(tmp_path / 'model.ckpt-7')
    assert report.left_out_names == sorted([*EXTRAS, *extra])
    reasons = {g.pattern: g.reason for g in report.left_out}
    assert 'optimizer slot' in reasons['*/Momentum']
    assert 'not part of the backbone' in reasons['aspp0/*']
    moving_mean = 'resnet_v1_50/block2/unit_3/bottleneck_v1/conv2/BatchNorm/moving_mean'
    loaded = {v.name[:-2]: v.numpy() for v in backbone.variables}
    assert np.array_equal(loaded[moving_mean], slim_tensors[moving_mean])
    # The `.index` file name is taken as its prefix.
    assert load_slim_backbone(backbone, str(tmp_path / 'model.ckpt-7.index')).loaded == 265


def test_other_depth_is_refused(slim_checkpoint, slim_tensors):
    backbone = ResNetV1(101, (1, 2, 4), np.random.default_rng(0), {})
    before = snapshot(backbone, slim_tensors)
    with pytest.raises(ValueError) as error:
        load_slim_backbone(backbone, slim_checkpoint)
    assert str(error.value) == f'checkpoint {slim_checkpoint} is resnet_v1_50, model has 101 layers'
    assert_unchanged(backbone, before)


def test_checkpoint_without_resnet_scope_is_refused(tmp_path, model50, slim_tensors):
    path = write_checkpoint(str(tmp_path / 'vgg.ckpt'), {
        'vgg_16/conv1/conv1_1/weights': np.zeros([3, 3, 3, 64], np.float32),
        'global_step': np.int64(1)})
    before = snapshot(model50, slim_tensors)
    with pytest.raises(ValueError, match='holds no resnet_v1_<depth> scope.*vgg_16'):
        load_slim_backbone(model50.backbone, path)
    assert_unchanged(model50, before)


def _wrong_shape(tensors):
    tensors[LAST_WEIGHTS] = np.zeros([1, 1, 512, 1024], np.float32)


def _missing(tensors):
    del tensors[LAST_WEIGHTS]
    del tensors['resnet_v1_50/block4/unit_3/bottleneck_v1/conv3/BatchNorm/gamma']


def _unknown(tensors):
    tensors['resnet_v1_50/block4/unit_3/bottleneck_v1/shortcut/weights'] = np.zeros(
        [1, 1, 2048, 2048], np.float32)


def _wrong_dtype(tensors):
    tensors[LAST_WEIGHTS] = tensors[LAST_WEIGHTS].astype(np.float64)


@pytest.mark.parametrize('mutate,message', [
    (_wrong_shape, rf'{LAST_WEIGHTS}: checkpoint \[1, 1, 512, 1024\] float32, '
                   rf'model \[1, 1, 512, 2048\] float32'),
    (_missing, rf'lacks 2 of the model\'s 265 resnet_v1_50 variables: '
               rf'resnet_v1_50/block4/unit_3/bottleneck_v1/conv3/BatchNorm/gamma, {LAST_WEIGHTS}$'),
    (_unknown, r'1 tensors under resnet_v1_50/ that the model does not have.*'
               r'block4/unit_3/bottleneck_v1/shortcut/weights'),
    (_wrong_dtype, rf'{LAST_WEIGHTS}: checkpoint \[1, 1, 512, 2048\] float64'),
])
def test_checkpoint_that_does_not_fit_is_refused_before_any_assignment(
        mutate, message, slim_tensors, tmp_path, model50):
    """The misfit sits in the last unit, so a loader that assigned as it went would already have
    changed the model."""
    tensors = dict(slim_tensors)
    mutate(tensors)
    path = write_checkpoint(str(tmp_path / 'resnet_v1_50.ckpt'), tensors)
    before = snapshot(model50, slim_tensors)
    with pytest.raises(ValueError, match=message):
        load_slim_backbone(model50.backbone, path)
    assert_unchanged(model50, before)


@pytest.mark.parametrize('kind', ['missing', 'directory', 'random_file'])
def test_not_a_checkpoint_is_refused(kind, tmp_path, model50, slim_tensors):
    if kind == 'missing':
        path = str(tmp_path / 'nowhere' / 'resnet_v1_50.ckpt')
    elif kind == 'directory':
        path = str(tmp_path)
    else:
        path = str(tmp_path / 'resnet_v1_50.ckpt')
        with open(path, 'wb') as f:
            f.write(np.random.default_rng(0).bytes(4096))
    before = snapshot(model50, slim_tensors)
    with pytest.raises(ValueError) as error:
        load_slim_backbone(model50.backbone, path)
    assert f'{path} is not a TF checkpoint' in str(error.value)
    assert_unchanged(model50, before)


MIRRORED = textwrap.dedent('''
    import sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from libs.nets.deeplabv3 import DeepLabV3
    from libs.nets.pretrained import load_slim_backbone
    strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
    with strategy.scope():
        model = DeepLabV3(num_classes=21, depth=50, seed=0)
    reader = tf.train.load_checkpoint(sys.argv[1])
    variables = {v.name[:-2]: v for v in model.backbone.variables}
    names = ['resnet_v1_50/block1/unit_1/bottleneck_v1/conv2/weights',
             'resnet_v1_50/block3/unit_5/bottleneck_v1/conv1/BatchNorm/moving_mean',
             'resnet_v1_50/conv1/BatchNorm/moving_variance']
    for name in names:
        replicas = strategy.experimental_local_results(variables[name])
        assert len(replicas) == 2, name
        assert not any(np.array_equal(r.numpy(), reader.get_tensor(name)) for r in replicas), name
    with strategy.scope():
        report = load_slim_backbone(model.backbone, sys.argv[1])
    assert report.loaded == 265, report.loaded
    for name in names:
        for replica in strategy.experimental_local_results(variables[name]):
            assert np.array_equal(replica.numpy(), reader.get_tensor(name)), (name, replica.device)
    print('ok', type(variables[names[1]]).__name__)
''')


def test_values_land_on_every_replica_under_mirrored_strategy(slim_checkpoint):
    """Mirrored weights and ON_READ (MEAN) moving statistics: each replica's copy is assigned. Two
    logical CPUs must be configured before TensorFlow starts, hence a fresh interpreter."""
    result = subprocess.run([sys.executable, '-c', MIRRORED, slim_checkpoint], cwd=ROOT,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, 'PYTHONPATH': ROOT})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ['ok', 'SyncOnReadVariable']
