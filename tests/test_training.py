"""The training loop, its step, loss, schedule and checkpoints, on tiny real records."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from config import TrainConfig
from libs.datasets import sample, voc_conversion
from libs.nets.deeplabv3 import DeepLabV3
from libs.runs import checkpoints
from libs.training import summaries
from libs.training.loop import TrainingDiverged, train
from libs.training.losses import masked_cross_entropy_sum
from libs.training.schedules import poly_learning_rate
from libs.training.step import build_optimizer, build_train_step
from processes import kill_after_first_checkpoint_then_rerun

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def records(tmp_path_factory):
    """A tiny sample dataset converted to records: 12 train and 4 val images of 65-81 px."""
    root = tmp_path_factory.mktemp('data')
    sample.write_sample_dataset(str(root / 'voc'), num_train=12, num_val=4, size_range=(65, 81),
                                seed=3)
    for split in ('train', 'val'):
        voc_conversion.convert_split(str(root / 'voc'), split, str(root / 'records'), progress=False)
    return str(root / 'records')


@pytest.fixture(scope='module')
def constant_records(tmp_path_factory):
    """Records holding one and the same 65x65 image four times: every batch is identical."""
    root = tmp_path_factory.mktemp('constant')
    voc_dir = root / 'voc'
    for sub in ('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation'):
        (voc_dir / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(65, 65, 3), dtype=np.uint8)
    label = np.zeros((65, 65), np.uint8)
    label[10:40, 20:50] = 15
    label[5:8, :] = 255
    ids = [f'2026_{i:06d}' for i in range(4)]
    for image_id in ids:
        Image.fromarray(image).save(voc_dir / 'JPEGImages' / f'{image_id}.jpg', quality=95)
        png = Image.fromarray(label, mode='L')
        png.save(voc_dir / 'SegmentationClass' / f'{image_id}.png')
    (voc_dir / 'ImageSets/Segmentation/train.txt').write_text('\n'.join(ids) + '\n')
    voc_conversion.convert_split(str(voc_dir), 'train', str(root / 'records'), num_shards=1,
                             progress=False)
    return str(root / 'records')


def tiny_config(data_dir, snapshot_dir, **overrides):
    values = dict(data_dir=data_dir, split_name='train', num_layers=50, batch_size=2,
                  input_size=65, num_steps=4, save_pred_every=2, log_every=1,
                  learning_rate=0.01, snapshot_dir=str(snapshot_dir), random_seed=5,
                  bn_decay=0.9)
    values.update(overrides)
    return TrainConfig(**values)


def test_poly_schedule_matches_formula():
    for step in (0, 1, 500, 29999, 30000):
        expected = 0.007 * (1 - step / 30000) ** 0.9
        assert float(poly_learning_rate(step, 0.007, 30000, 0.9)) == pytest.approx(expected,
                                                                                   rel=1e-5)


def test_loss_ignores_255():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(1, 9, 9)).astype(np.int32)
    labels[0, :4] = 255
    logits = tf.Variable(rng.standard_normal((1, 9, 9, 3)).astype(np.float32))
    with tf.GradientTape() as tape:
        loss, valid, _ = masked_cross_entropy_sum(logits, tf.constant(labels), 255)
    gradient = tape.gradient(loss, logits).numpy()
    assert float(valid) == 5 * 9
    assert np.all(gradient[0, :4] == 0)
    assert np.all(np.abs(gradient[0, 4:]).sum(axis=-1) > 0)
    # Changing the logits of ignored pixels leaves the loss unchanged.
    changed = logits.numpy()
    changed[0, :4] += 100.0
    loss_changed, _, _ = masked_cross_entropy_sum(tf.constant(changed), tf.constant(labels), 255)
    assert float(loss_changed) == pytest.approx(float(loss), rel=1e-6)


def test_loop_trains_and_loss_falls(constant_records, tmp_path):
    lines = []
    config = tiny_config(constant_records, tmp_path / 'run', num_steps=8, save_pred_every=8,
                         random_scale=False, random_mirror=False, weight_decay=0.0)
    result = train(config, log=lines.append)
    assert lines[0].startswith('Starting from scratch (random weights): the paper starts from '
                               'ImageNet weights, pass --imagenet resnet_v1_50.ckpt')
    losses = [float(line.split('loss ')[1].split()[0]) for line in lines
              if line.startswith('step ') and ' loss ' in line]
    assert len(losses) == 8
    assert losses[-1] < 0.7 * losses[0], losses
    assert result.global_step == 8
    assert os.path.isfile(os.path.join(config.snapshot_dir, 'config.json'))
    assert any('img/s' in line and 'ETA' in line and 'lr ' in line for line in lines)
    events = os.listdir(os.path.join(config.snapshot_dir, 'train'))
    assert any(name.startswith('events.out.tfevents') for name in events)


def _variables(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name != '_CHECKPOINTABLE_OBJECT_GRAPH'}


@pytest.fixture
def undo_op_determinism():
    """`deterministic=True` turns op determinism on for the whole process
    (`loop.make_deterministic`); it is turned off after the test, so that the tests after it run
    the kernels they run alone (measured: test_tflite's int8 agreement fell from 0.93 to 0.88
    after this test)."""
    yield
    from tensorflow.python.framework import config as framework_config
    framework_config.disable_op_determinism()


@pytest.mark.parametrize('dropout_keep_prob', [1.0, 0.5])
def test_resume_keeps_step_and_optimizer_state(constant_records, tmp_path, undo_op_determinism,
                                               dropout_keep_prob):
    """Resuming a 4-step run from its step-2 checkpoint ends with the same weights as the run that
    went straight through: the global step (hence the learning rate, and the dropout masks) and
    the momentum survive. Every batch is the same image, so the data order cannot explain a
    difference; deterministic ops rule out thread-order rounding. (Batch 1: two identical images
    in one batch would give the image-pooling batch norm a variance of pure rounding noise.)"""
    config = tiny_config(constant_records, tmp_path / 'straight', random_scale=False,
                         random_mirror=False, num_steps=4, save_pred_every=2, batch_size=1,
                         deterministic=True, dropout_keep_prob=dropout_keep_prob)
    straight = train(config, log=lambda _: None)
    with open(os.path.join(config.snapshot_dir, 'config.json')) as f:
        assert json.load(f)['dropout_keep_prob'] == dropout_keep_prob
    assert straight.global_step == 4
    resumed_dir = tmp_path / 'resumed'
    resumed_dir.mkdir()
    for name in os.listdir(config.snapshot_dir):
        if name.startswith('model-2.') or name == 'config.json':
            shutil.copy(os.path.join(config.snapshot_dir, name), resumed_dir / name)
    (resumed_dir / 'checkpoint').write_text('model_checkpoint_path: "model-2"\n'
                                            'all_model_checkpoint_paths: "model-2"\n')
    lines = []
    resumed = train(dataclasses.replace(config, snapshot_dir=str(resumed_dir)), log=lines.append)
    assert any(line.startswith('Resuming from') and 'at step 2' in line for line in lines)
    assert resumed.global_step == 4
    a, b = _variables(straight.checkpoint), _variables(resumed.checkpoint)
    slots = [k for k in a if '.OPTIMIZER_SLOT' in k]
    assert slots and a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-5, err_msg=name)
    # Losing the momentum would change the second half's updates by lr * 0.9 * momentum.
    halfway = _variables(os.path.join(config.snapshot_dir, 'model-2'))
    momentum = [k for k in slots if k.startswith('model/backbone/conv1/kernel/')]
    assert len(momentum) == 1 and np.abs(halfway[momentum[0]]).max() > 1e-3


def train_command(data_dir, snapshot_dir, *flags):
    return [sys.executable, os.path.join(ROOT, 'train.py'), '--data-dir', data_dir,
            '--split-name', 'train', '--num-layers', '50', '--batch-size', '2',
            '--input-size', '65', '--save-pred-every', '2', '--log-every', '1',
            '--bn-decay', '0.9', '--snapshot-dir', str(snapshot_dir), *map(str, flags)]


@pytest.fixture(scope='module')
def five_records(tmp_path_factory):
    """5 train images of 65-97 px in 2 shards: batches of 2 cross an epoch every 2.5 steps."""
    root = tmp_path_factory.mktemp('five')
    sample.write_sample_dataset(str(root / 'voc'), num_train=5, num_val=1, size_range=(65, 97),
                                seed=4)
    voc_conversion.convert_split(str(root / 'voc'), 'train', str(root / 'records'), num_shards=2,
                             progress=False)
    return str(root / 'records')


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_weights_of_the_uninterrupted_run(five_records, tmp_path):
    """Three real train.py processes with --deterministic: one straight through 6 steps; one
    SIGKILLed after logging step 3 (its last checkpoint is step 2's, or step 4's on a machine so
    loaded that the kill lands late) and run again. Resumed at step 2, it redoes step 3 and takes
    the batches the straight run took from there (examples 4-11: epoch 0's last record, then
    epochs 1 and 2 in their own orders, with random scale and mirror), so every variable ends
    bitwise equal: checkpoints restore exactly, and deterministic ops give
    the same result in a fresh process. Replaying the data from step 0 instead changes them."""
    flags = ('--num-steps', 6, '--deterministic')
    straight = subprocess.run(train_command(five_records, tmp_path / 'straight', *flags),
                              capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert straight.returncode == 0, straight.stdout[-2000:] + straight.stderr[-2000:]
    command = train_command(five_records, tmp_path / 'killed', *flags)
    killed_at, first, rerun = kill_after_first_checkpoint_then_rerun(command, kill_at_step=3)
    assert killed_at in (2, 4), killed_at
    assert 'Starting from scratch (random weights)' in first
    assert 'Starting from scratch' not in rerun  # a resumed run has its weights
    a = _variables(os.path.join(tmp_path / 'straight', 'model-6'))
    b = _variables(os.path.join(tmp_path / 'killed', 'model-6'))
    assert a.keys() == b.keys() and any('.OPTIMIZER_SLOT' in k for k in a)
    different = [name for name in a if not np.array_equal(a[name], b[name])]
    assert not different, different[:5]


def test_divergence_stops_with_step_and_keeps_last_good_checkpoint(constant_records, tmp_path):
    """An absurd learning rate, a checkpoint after every step: the weights grow for a few steps,
    then the run stops naming the step, and the latest checkpoint is an earlier one with finite
    weights."""
    config = tiny_config(constant_records, tmp_path / 'nan', num_steps=8, save_pred_every=1,
                         learning_rate=1e3, random_scale=False, random_mirror=False)
    with pytest.raises(TrainingDiverged, match=r'at step (\d+)') as error:
        train(config, log=lambda _: None)
    step = int(str(error.value).split('at step ')[1].split()[0])
    assert 3 <= step <= 8
    latest = tf.train.latest_checkpoint(config.snapshot_dir)
    assert latest in str(error.value)
    assert checkpoints.describe_checkpoint(latest)['global_step'] == step - 1
    values = _variables(latest)
    assert all(np.all(np.isfinite(v)) for v in values.values() if v.dtype.kind == 'f')


def test_config_json_is_the_record_of_the_run(constant_records, tmp_path):
    """config.json is written when a run starts; a run with nothing to train, or a new stage
    pointed at an old stage's dir, leaves it alone; a resume may only change the fields of
    `RESUMABLE_CHANGES`, and such a change is recorded beside it."""
    config = tiny_config(constant_records, tmp_path / 'stage1', num_steps=2, random_scale=False)
    train(config, log=lambda _: None)
    path = os.path.join(config.snapshot_dir, 'config.json')
    with open(path) as f:
        record = f.read()
    assert json.loads(record)['num_steps'] == 2
    os.utime(path, (0, 0))

    lines = []
    assert train(config, log=lines.append).global_step == 2
    assert 'Already at step 2 of 2: nothing to train' in lines
    # Stage 2 (another output stride and learning rate) pointed at stage 1's dir by mistake.
    stage2 = dataclasses.replace(config, output_stride=8, learning_rate=0.001, num_steps=4)
    with pytest.raises(ValueError, match=r'--output-stride was 16, now 8; --learning-rate was '
                                         r'0\.01, now 0\.001\): resume it with the recorded '
                                         r'values, or train in another --snapshot-dir '
                                         r'\(--restore-from .*stage1 starts from its weights\)'):
        train(stage2, log=lambda _: None)
    assert os.stat(path).st_mtime == 0  # neither run wrote it

    lines = []
    longer = dataclasses.replace(config, num_steps=3, log_every=2)
    assert train(longer, log=lines.append).global_step == 3
    with open(path) as f:
        assert f.read() == record
    with open(os.path.join(config.snapshot_dir, 'config-step-2.json')) as f:
        assert json.load(f)['num_steps'] == 3
    assert any(line.startswith('Resuming with --num-steps, --log-every changed') for line in lines)
    assert sorted(n for n in os.listdir(config.snapshot_dir) if n.endswith('.json')) == [
        'config-step-2.json', 'config.json']


def test_step_timer_leaves_checkpoint_time_out_of_images_per_second():
    """2 steps of 1 s, a 10 s checkpoint, 1 step of 1 s, then a log: 3 steps x 4 images in 3 s.
    (Counting the steps but not the time before the checkpoint gave 12 images/s.)"""
    now = [0.0]
    timer = summaries.StepTimer(clock=lambda: now[0])
    now[0] += 2.0
    timer.count(2)
    with timer.paused():
        now[0] += 10.0
    now[0] += 1.0
    timer.count(1)
    assert timer.lap(batch_size=4) == pytest.approx(4.0)
    now[0] += 0.5
    timer.count(1)
    assert timer.lap(batch_size=4) == pytest.approx(8.0)  # a new interval


def test_restore_from_another_run_across_output_strides(constant_records, tmp_path):
    source = train(tiny_config(constant_records, tmp_path / 'os16', num_steps=2,
                               random_scale=False), log=lambda _: None)
    lines = []
    config = tiny_config(constant_records, tmp_path / 'os8', num_steps=1, output_stride=8,
                         restore_from=str(tmp_path / 'os16'), learning_rate=0.0,
                         weight_decay=0.0, random_scale=False)
    result = train(config, log=lines.append)
    assert any('Starting from the weights of' in line and 'start fresh' in line for line in lines)
    assert not any('Starting from scratch' in line for line in lines)
    assert result.global_step == 1  # The source's step 2 was left behind.
    before, after = _variables(source.checkpoint), _variables(result.checkpoint)
    conv = 'model/backbone/blocks/2/0/conv2/kernel/.ATTRIBUTES/VARIABLE_VALUE'
    np.testing.assert_array_equal(before[conv], after[conv])  # lr 0: weights carried over.


def test_restore_of_another_depth_is_refused_with_reason(constant_records, tmp_path):
    train(tiny_config(constant_records, tmp_path / 'r50', num_steps=1, save_pred_every=1),
          log=lambda _: None)
    model = DeepLabV3(num_classes=21, depth=101)
    with pytest.raises(ValueError, match='depth: checkpoint has 50 layers, model has 101'):
        checkpoints.restore_model_weights(model, str(tmp_path / 'r50'))
    model = DeepLabV3(num_classes=5, depth=50)
    with pytest.raises(ValueError, match='classes: checkpoint has 21, model has 5'):
        checkpoints.restore_model_weights(model, str(tmp_path / 'r50'))
    # Resuming a snapshot dir with another architecture is refused before anything is written.
    with pytest.raises(ValueError, match='--num-layers was 50, now 101'):
        train(tiny_config(constant_records, tmp_path / 'r50', num_layers=101),
              log=lambda _: None)


@pytest.mark.parametrize('freeze_bn', [True, False])
def test_train_step_batch_norm_modes(freeze_bn, constant_records):
    """Frozen: moving statistics and gamma/beta unchanged by a step. Fine-tuned: statistics move.
    Either way the step is traced once."""
    config = tiny_config(constant_records, '/unused', freeze_bn=freeze_bn, num_classes=21)
    strategy = tf.distribute.get_strategy()
    model = checkpoints.build_model(config)
    step = tf.Variable(0, dtype=tf.int64)
    optimizer = build_optimizer(config, step, model)
    images = tf.random.stateless_normal([2, 65, 65, 3], seed=[0, 1]) * 50
    labels = tf.zeros([2, 65, 65], tf.int32)
    iterator = iter(tf.data.Dataset.from_tensors((images, labels)).repeat())
    bn = {v.name: v.numpy().copy() for v in model.variables if '/BatchNorm/' in v.name}
    kernel = model.backbone.conv1.kernel.numpy().copy()
    train_step = build_train_step(model, optimizer, step, strategy, config)
    train_step(iterator)
    assert int(step.numpy()) == 1
    # The optimiser's slots existed before the first call: one trace, not one to create them
    # and another to run (measured: 2 when the first apply_gradients created them).
    assert train_step.experimental_get_tracing_count() == 1
    assert np.abs(model.backbone.conv1.kernel.numpy() - kernel).max() > 0
    after = {v.name: v.numpy() for v in model.variables if '/BatchNorm/' in v.name}
    moving = 'resnet_v1_50/conv1/BatchNorm/moving_mean:0'
    gamma = 'resnet_v1_50/conv1/BatchNorm/gamma:0'
    if freeze_bn:
        for name in bn:
            np.testing.assert_array_equal(bn[name], after[name], err_msg=name)
    else:
        assert np.abs(after[moving] - bn[moving]).max() > 1e-3
        assert np.abs(after[gamma] - bn[gamma]).max() > 0


def test_train_distributed_refuses_deterministic(capsys):
    import train_distributed
    with pytest.raises(SystemExit) as exit_status:
        train_distributed.parse_args(['--job-name', 'chief', '--deterministic'])
    assert exit_status.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.split(': ', 1)[1].startswith('error: --deterministic cannot make '
                            'asynchronous training reproducible')
    assert not train_distributed.parse_args(['--job-name', 'chief']).deterministic
