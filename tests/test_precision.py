"""Training precision: bfloat16 training through the real loop, and the dynamic loss scaling of
float16 training driven through the real train step and the real loop with float32 compute
(TensorFlow's CPU kernels have no float16 gradient of an atrous convolution, so float16 cannot
train this network here; the mechanism does not depend on the compute dtype)."""
import dataclasses
import glob
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import config as config_lib
from config import TrainConfig
from libs.datasets import input_pipeline, tfrecord
from libs.evaluation.run import evaluate_checkpoint
from libs.runs import checkpoints, record
from libs.training.loop import TrainingDiverged, train
from libs.training.loss_scale import MAX_SKIPS_IN_A_ROW, DynamicLossScale
from libs.training.step import build_optimizer, build_train_step
from test_training import _variables, constant_records, tiny_config  # noqa: F401 (a fixture)

SIZE = 49
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bfloat16_training_lowers_the_loss_keeps_float32_variables_and_evaluates_in_float32(
        constant_records, tmp_path):  # noqa: F811
    """8 bfloat16 steps on one repeated batch lower the loss as float32's test asks
    (test_training.test_loop_trains_and_loss_falls: below 0.7x the first); the checkpoint holds
    float32 variables only, the run evaluates in float32 by default, and a resume may change the
    precision."""
    lines = []
    config = tiny_config(constant_records, tmp_path / 'bf16', num_steps=8, save_pred_every=8,
                         random_scale=False, random_mirror=False, weight_decay=0.0,
                         precision='bfloat16')
    result = train(config, log=lines.append)
    losses = [float(line.split('loss ')[1].split()[0]) for line in lines
              if line.startswith('step ') and ' loss ' in line]
    assert len(losses) == 8 and losses[-1] < 0.7 * losses[0], losses
    with open(os.path.join(config.snapshot_dir, 'config.json')) as f:
        assert json.load(f)['precision'] == 'bfloat16'
    reader = tf.train.load_checkpoint(result.checkpoint)
    dtypes = {name: dtype for name, dtype in reader.get_variable_to_dtype_map().items()
              if name.startswith('model/')}
    assert len(dtypes) > 300 and set(dtypes.values()) == {tf.float32}, set(dtypes.values())

    report = evaluate_checkpoint(config.snapshot_dir, constant_records, 'train', progress=False,
                                 log=lambda _: None)
    assert report['precision'] == 'float32' and np.isfinite(report['miou'])

    recorded = config_lib.load_run_config(config.snapshot_dir)
    assert record.check_snapshot_dir(dataclasses.replace(recorded, precision='float32')) == [
        'precision']


def test_train_refuses_float16_without_a_gpu(tmp_path, capsys):
    """One line, exit 1, and nothing written: the snapshot dir is not even created."""
    import train as train_script
    run_dir = tmp_path / 'f16'
    assert train_script.main(['--data-dir', str(tmp_path), '--snapshot-dir', str(run_dir),
                              '--precision', 'float16']) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: --precision float16 needs a GPU'), err
    assert not run_dir.exists()


def _fixed_batches():
    """One batch of 2 images [2, 49, 49, 3] and labels, repeated."""
    rng = np.random.default_rng(0)
    images = rng.normal(0, 50, (2, SIZE, SIZE, 3)).astype(np.float32)
    labels = np.zeros((2, SIZE, SIZE), np.int32)
    labels[:, SIZE // 2:] = 1
    labels[:, :, :SIZE // 3] = 2
    labels[:, 0] = 255
    return iter(tf.data.Dataset.from_tensors((images, labels)).repeat())


@pytest.fixture(scope='module')
def scaled_step():
    """A ResNet-50 train step in float32 with a `DynamicLossScale` of growth interval 3, and the
    state it changes (model and optimiser variables, global step, loss scale)."""
    config = TrainConfig(num_layers=50, num_classes=21, batch_size=2, input_size=SIZE,
                         learning_rate=0.01, num_steps=100, bn_decay=0.9, random_seed=1)
    model = checkpoints.build_model(config)
    step = tf.Variable(0, dtype=tf.int64)
    optimizer = build_optimizer(config, step, model)
    loss_scale = DynamicLossScale(initial_scale=2.0 ** 120, growth_interval=3)
    train_step = build_train_step(model, optimizer, step, tf.distribute.get_strategy(), config,
                                  loss_scale)
    return dict(model=model, optimizer=optimizer, step=step, loss_scale=loss_scale,
                train_step=train_step, iterator=_fixed_batches())


def _trained(s):
    """Trainable variables and momentum slots (slots exist after the first applied update)."""
    return ([v.numpy() for v in s['model'].trainable_variables]
            + [v.numpy() for v in s['optimizer'].variables()])


def test_overflow_skips_and_halves_then_growth_after_the_interval(scaled_step, tmp_path):
    """Loss scale 2^120: the backward pass overflows float32 (the weights' gradients reach 17 on
    this batch at random init, and activations' gradients more), as a float16 backward pass
    overflows with too large a scale. Each such step is skipped (weights,
    momentum and global step unchanged, the loss finite) and halves the scale, until a step is
    applied. Then every 3 finite steps in a row double it; the scale and its counters survive a
    checkpoint."""
    s = scaled_step
    scale, skipped = s['loss_scale'], 0
    before = _trained(s)
    while int(s['step'].numpy()) == 0:
        loss, _ = s['train_step'](s['iterator'])
        assert np.isfinite(float(loss))  # the gradients overflowed, not the loss
        if int(s['step'].numpy()) == 0:
            skipped += 1
            assert float(scale.scale.numpy()) == 2.0 ** (120 - skipped)
            for a, b in zip(before, _trained(s)):
                np.testing.assert_array_equal(a, b)
        assert skipped < 30
    assert skipped >= 1 and int(scale.skipped.numpy()) == skipped
    assert int(scale.skips_in_a_row.numpy()) == 0 and scale.divergence() is None
    applied_at = float(scale.scale.numpy())
    assert any(np.abs(a - b).max() > 0 for a, b in zip(before[:5], _trained(s)))

    # Growth: a scale far below overflow, 3 finite steps -> doubled, counter back to 0.
    scale.scale.assign(4.0)
    scale.finite_in_a_row.assign(0)
    scales = []
    for _ in range(4):
        s['train_step'](s['iterator'])
        scales.append(float(scale.scale.numpy()))
    assert scales == [4.0, 4.0, 8.0, 8.0], (applied_at, scales)
    assert int(s['step'].numpy()) == 5 and int(scale.finite_in_a_row.numpy()) == 1

    prefix = tf.train.Checkpoint(loss_scale=scale, step=s['step']).save(str(tmp_path / 'ckpt'))
    restored = DynamicLossScale(growth_interval=3)
    tf.train.Checkpoint(loss_scale=restored).restore(prefix).expect_partial()
    assert [float(v.numpy()) for v in restored.variables] == [
        float(v.numpy()) for v in scale.variables]
    assert float(restored.scale.numpy()) == 8.0 and int(restored.skipped.numpy()) == skipped
    assert 'loss_scale' in checkpoints.saved_objects(prefix)


def test_unscaled_update_does_not_depend_on_the_scale(scaled_step):
    """The same step from the same state with scale 1 and with scale 2^100 applies the same
    update: the gradients are divided by the scale before the optimiser sees them."""
    s = scaled_step
    state = list(s['model'].variables) + s['optimizer'].variables() + [s['step']]
    start = [v.numpy() for v in state]
    trainable = s['model'].trainable_variables
    weights = [v.numpy() for v in trainable]
    updates = []
    for value in (1.0, 2.0 ** 100):
        for variable, initial in zip(state, start):
            variable.assign(initial)
        s['loss_scale'].scale.assign(value)
        s['train_step'](s['iterator'])
        updates.append([v.numpy() - w for v, w in zip(trainable, weights)])
    assert int(s['step'].numpy()) == int(start[-1]) + 1
    largest = max(np.abs(u).max() for u in updates[0])
    assert largest > 0
    for a, b in zip(*updates):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * largest)


def test_divergence_at_scale_one_or_after_too_many_skips():
    """A skip that halves 2 to 1 is ordinary; one more at 1 stops the run. From a scale that has
    grown, `MAX_SKIPS_IN_A_ROW` skips in a row stop it; a finite step in between resets the
    count."""
    scale = DynamicLossScale(initial_scale=2.0, growth_interval=3)
    scale.update(tf.constant(False))
    assert float(scale.scale.numpy()) == 1.0 and scale.divergence() is None
    scale.update(tf.constant(False))
    assert 'at loss scale 1' in scale.divergence()

    scale = DynamicLossScale(initial_scale=2.0 ** 40, growth_interval=3)
    for _ in range(MAX_SKIPS_IN_A_ROW - 1):
        scale.update(tf.constant(False))
    assert scale.divergence() is None
    scale.update(tf.constant(True))
    assert int(scale.skips_in_a_row.numpy()) == 0
    for _ in range(MAX_SKIPS_IN_A_ROW):
        scale.update(tf.constant(False))
    assert f'{MAX_SKIPS_IN_A_ROW} float16 steps in a row' in scale.divergence()
    assert int(scale.skipped.numpy()) == 2 * MAX_SKIPS_IN_A_ROW - 1


def test_mirrored_bfloat16_and_replicas_skip_together():
    """MirroredStrategy on 2 logical CPUs (tests/mirrored_checks.py precision, a fresh process).
    bfloat16 with synchronised batch norm: the loss falls over 3 steps on one batch, every
    variable copy stays float32 and both replicas hold the same weights. Loss scaling: replica 0
    sees only ignored labels, so its own gradient is weight decay alone and finite, replica 1's
    backward pass overflows; both skip (weights unchanged on both, the scale halved on both) until
    the scale is low enough, then both apply the same update."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'mirrored_checks.py'),
                           'precision'], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result['replicas'] == 2
    losses = result['bfloat16_losses']
    assert losses[-1] < 0.9 * losses[0], losses
    assert result['bfloat16_dtypes'] == ['float32'] and result['bfloat16_replicas'] == 0.0

    assert result['replica0_gradient_bound'] < np.finfo(np.float32).max / 2 ** 20
    *skipped, applied = result['skips']
    assert skipped, result['skips']
    for index, (step, scale0, scale1, change0, change1) in enumerate(skipped, start=1):
        assert (step, change0, change1) == (0, 0.0, 0.0)
        assert scale0 == scale1 == 2.0 ** (120 - index)
    step, scale0, scale1, change0, change1 = applied
    assert step == 1 and scale0 == scale1 == 2.0 ** (120 - len(skipped))
    assert change0 == change1 > 0 and result['applied_replicas'] == 0.0


def _progress(lines):
    """{step: progress line} of the loop's log."""
    return {int(line.split()[1].split('/')[0]): line for line in lines if line.startswith('step ')
            and ' loss ' in line}


def _tensorboard_scalars(run_dir, tag):
    """{step: value} of one scalar in the run's TensorBoard events."""
    values = {}
    for path in glob.glob(os.path.join(run_dir, 'train', 'events.out.tfevents.*')):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return values


def test_loop_skips_overflowing_steps_keeps_the_scale_and_resumes_stream_after_them(
        trained_run, tmp_path):
    """The loop's float16 path on float32 compute, with a loss scale of 2^122 (its backward pass
    overflows, as float16's does with too large a scale). trained_run's float32 run (2 steps, no
    loss scale, no count of batches taken) is resumed to step 4: the scale starts at 2^122, the
    first steps are skipped (each halves it, takes a batch, leaves the global step) and shown in
    the log and TensorBoard, and the run still ends at exactly step 4. Its step-3 checkpoint holds
    the scale and the batches taken, and a run resumed from it starts from that scale (not the
    given 2^122) and continues the stream where the uninterrupted run did, after the skipped
    steps' batches: its step-4 weights equal the uninterrupted run's."""
    exponent = 122  # 2^122 times a gradient of 64 overflows float32 (here they reach ~2^9)
    straight_dir = tmp_path / 'straight'
    shutil.copytree(trained_run.run_dir, straight_dir)
    config = dataclasses.replace(config_lib.load_run_config(trained_run.run_dir),
                                 snapshot_dir=str(straight_dir), num_steps=4, save_pred_every=3,
                                 log_every=1)
    lines = []
    result = train(config, log=lines.append,
                   loss_scale=DynamicLossScale(initial_scale=2.0 ** exponent))
    assert result.global_step == 4
    assert any(' holds no loss scale ' in line and line.endswith(f'starts at {2.0 ** exponent:g}')
               for line in lines), lines
    progress = _progress(lines)
    assert sorted(progress) == [3, 4], lines
    skips = {at: int(line.split(' skipped')[0].split()[-1]) for at, line in progress.items()}
    skipped, scale = skips[3], 2.0 ** (exponent - skips[3])
    assert skipped >= 1
    for at, line in progress.items():
        assert f'loss scale {2.0 ** (exponent - skips[at]):g}, {skips[at]} skipped' in line, line
    assert _tensorboard_scalars(straight_dir, 'skipped_steps') == skips
    at_3 = _variables(os.path.join(straight_dir, 'model-3'))
    assert at_3['step/.ATTRIBUTES/VARIABLE_VALUE'] == 3
    assert at_3['loss_scale/scale/.ATTRIBUTES/VARIABLE_VALUE'] == scale
    assert at_3['loss_scale/skipped/.ATTRIBUTES/VARIABLE_VALUE'] == skipped
    assert at_3['batches_taken/.ATTRIBUTES/VARIABLE_VALUE'] == 3 + skipped

    resumed_dir = tmp_path / 'resumed'
    resumed_dir.mkdir()
    for path in glob.glob(os.path.join(straight_dir, 'model-3.*')) + [
            os.path.join(straight_dir, 'config.json')]:
        shutil.copy(path, resumed_dir)
    (resumed_dir / 'checkpoint').write_text('model_checkpoint_path: "model-3"\n')
    lines = []
    resumed = train(dataclasses.replace(config, snapshot_dir=str(resumed_dir)), log=lines.append,
                    loss_scale=DynamicLossScale(initial_scale=2.0 ** exponent))
    assert resumed.global_step == 4
    assert not any(' holds no loss scale ' in line for line in lines)
    assert f'loss scale {2.0 ** (exponent - skips[4]):g}, {skips[4]} skipped' in _progress(lines)[4]

    # The batch the uninterrupted run took for step 4 is not the 4th of the stream: without the
    # count of batches taken, the resumed run would have trained on another one.
    def batch(taken):
        return next(iter(input_pipeline.train_dataset(
            tfrecord.list_shards(config.data_dir, config.split_name), config.batch_size,
            crop_size=config.input_size, random_scale=(config.min_scale, config.max_scale),
            random_mirror=config.random_mirror, ignore_label=config.ignore_label,
            seed=config.random_seed, start_example=taken * config.batch_size)))[0].numpy()
    assert config.random_scale and not np.array_equal(batch(3), batch(3 + skipped))

    a, b = (_variables(os.path.join(run_dir, 'model-4'))
            for run_dir in (straight_dir, resumed_dir))
    assert a.keys() == b.keys()
    assert max(np.abs(a[name] - at_3[name]).max() for name in a
               if name.startswith('model/') and a[name].dtype.kind == 'f') > 1e-3
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_loop_stops_as_diverged_when_a_step_is_skipped_at_scale_one(constant_records, tmp_path):
    """Loss scale 1 and an absurd learning rate: step 1 is applied (its loss finite), and makes
    the weights so large that step 2's loss (its weight decay) is Inf. That skip at scale 1 ends
    the run as diverged, naming the step, without saving."""
    config = tiny_config(constant_records, tmp_path / 'diverged', num_steps=4, save_pred_every=4,
                         learning_rate=1e30, random_scale=False, random_mirror=False)
    lines = []
    # No `as`: the exception's traceback would keep the run's input pipeline alive, and its
    # threads busy, after the test.
    with pytest.raises(TrainingDiverged, match=re.escape(
            'a non-finite loss or gradient at loss scale 1 at step 2; stopped without saving. '
            'The last good checkpoint is None')):
        train(config, log=lines.append, loss_scale=DynamicLossScale(initial_scale=1.0))
    progress = _progress(lines)
    assert list(progress) == [1] and 'loss scale 1, 0 skipped' in progress[1], lines
    assert np.isfinite(float(progress[1].split('loss ')[1].split()[0]))
    assert tf.train.latest_checkpoint(config.snapshot_dir) is None


def test_loop_stops_as_diverged_after_too_many_skips_in_a_row(constant_records, tmp_path):
    """A loss scale that no halving brings back into range (Inf: every scaled gradient
    overflows, as when the weights, not the scale, are at fault): the loop skips
    `MAX_SKIPS_IN_A_ROW` steps, none of which advances the global step, then stops as diverged
    without saving."""
    config = tiny_config(constant_records, tmp_path / 'skipping', num_steps=40,
                         save_pred_every=40, random_scale=False, random_mirror=False)
    loss_scale = DynamicLossScale(initial_scale=float('inf'))
    lines = []
    with pytest.raises(TrainingDiverged, match=re.escape(
            f'{MAX_SKIPS_IN_A_ROW} float16 steps in a row had non-finite gradients (loss scale '
            'now inf) at step 1; stopped without saving. The last good checkpoint is None')):
        train(config, log=lines.append, loss_scale=loss_scale)
    # It took that many steps, one skip each, and stopped at the first verdict that called it.
    assert int(loss_scale.skipped.numpy()) == MAX_SKIPS_IN_A_ROW
    assert int(loss_scale.skips_in_a_row.numpy()) == MAX_SKIPS_IN_A_ROW
    assert _progress(lines) == {}, lines  # no step was applied
    assert tf.train.latest_checkpoint(config.snapshot_dir) is None
