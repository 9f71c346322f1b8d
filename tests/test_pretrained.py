"""ImageNet import: a checkpoint with TF-slim's resnet_v1_50 names loads completely, by value, and
every checkpoint that does not fit is refused without touching the model."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from libs.nets.deeplabv3 import DeepLabV3
from libs.nets.pretrained import LOGITS_REASON, load_slim_backbone
from libs.nets.resnet_v1 import ResNetV1

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAST_WEIGHTS = 'resnet_v1_50/block4/unit_3/bottleneck_v1/conv3/weights'


def slim_resnet_v1_50_shapes():
    """Names and shapes of slim's `resnet_v1_50` backbone, written from slim's spec, not our model:
    units per block 3/4/6/3, bottleneck depths 64/128/256/512 (output 4x), a shortcut conv in each
    block's first unit only, conv1 7x7x3x64; every conv has weights and BatchNorm, no biases."""
    shapes = {}

    def conv(scope, kernel, cin, cout):
        shapes[f'{scope}/weights'] = (kernel, kernel, cin, cout)
        for name in ('beta', 'gamma', 'moving_mean', 'moving_variance'):
            shapes[f'{scope}/BatchNorm/{name}'] = (cout,)

    conv('resnet_v1_50/conv1', 7, 3, 64)
    cin = 64
    for block, (units, depth) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
        for unit in range(1, units + 1):
            scope = f'resnet_v1_50/block{block}/unit_{unit}/bottleneck_v1'
            if unit == 1:
                conv(f'{scope}/shortcut', 1, cin, 4 * depth)
            conv(f'{scope}/conv1', 1, cin, depth)
            conv(f'{scope}/conv2', 3, depth, depth)
            conv(f'{scope}/conv3', 1, depth, 4 * depth)
            cin = 4 * depth
    return shapes


BACKBONE = slim_resnet_v1_50_shapes()
EXTRAS = {'resnet_v1_50/logits/weights': (1, 1, 2048, 1000), 'resnet_v1_50/logits/biases': (1000,),
          'global_step': ()}


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
    """Seeded values for the whole slim resnet_v1_50 file; moving variances are positive."""
    rng = np.random.default_rng(0)
    tensors = {name: rng.standard_normal(shape, dtype=np.float32)
               for name, shape in {**BACKBONE, **EXTRAS}.items() if name != 'global_step'}
    for name in tensors:
        if name.endswith('moving_variance'):
            tensors[name] = np.abs(tensors[name]) + 0.5
    tensors['global_step'] = np.int64(1_000_000)
    return tensors


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


def test_slim_spec_has_265_backbone_tensors():
    assert len(BACKBONE) == 53 * 5 == 265
    shortcut = 'resnet_v1_50/block3/unit_1/bottleneck_v1/shortcut/weights'
    assert BACKBONE[shortcut] == (1, 1, 512, 1024)


def test_every_backbone_value_arrives(slim_checkpoint, slim_tensors):
    model = DeepLabV3(num_classes=21, depth=50, seed=0)
    head_before = {v.name: v.numpy().copy() for v in model.variables
                   if not v.name.startswith('resnet_v1_50/')}
    assert len(head_before) == 6 * 5 + 2  # 6 ASPP convs with batch norm; logits weights, biases.

    report = load_slim_backbone(model.backbone, slim_checkpoint)

    variables = {v.name[:-2]: v for v in model.backbone.variables}
    assert variables.keys() == BACKBONE.keys()
    for name in BACKBONE:
        assert np.array_equal(variables[name].numpy(), slim_tensors[name]), name
    assert report.loaded == 265
    assert report.left_out_names == sorted(EXTRAS)
    reasons = {g.pattern: g.reason for g in report.left_out}
    assert reasons == {'resnet_v1_50/logits/*': LOGITS_REASON, 'global_step': 'training state'}
    summary = report.summary()
    for text in ('265', 'resnet_v1_50/logits/*', 'ImageNet classifier', 'global_step',
                 'training state'):
        assert text in summary
    head_after = {v.name: v.numpy() for v in model.variables
                  if not v.name.startswith('resnet_v1_50/')}
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
