"""Run by tests/test_multi_gpu.py in a fresh process (the CPU must be split into logical devices
before TensorFlow initialises them): one device vs MirroredStrategy on 2 logical CPU devices.

`python3 tests/mirrored_checks.py step`: the same model, the same fixed batch of 4 images; prints
one JSON line with what the test asserts on:
- `weights`: the difference of the one-step weight updates (mirrored vs one device), as the norm
  of the difference over the norm of one device's update, over all trainable variables;
  `weights_max`: the largest difference relative to the largest update;
- `loss`: the two first-step losses;
- `moving_replicas`: the largest difference of moving statistics between the two replicas;
- `moving_vs_single`: the largest difference of (replica 0's) moving statistics from one device's,
  relative to the largest value of each statistic;
- `moving_change`: the largest change of a moving statistic in that step (so the checks above
  compare something that moved);
- `losses`: the mirrored model's loss over further steps on the same batch.

`python3 tests/mirrored_checks.py precision`: the same model and batch under 2 replicas; prints one
JSON line:
- `bfloat16_losses`: the losses of bfloat16 steps with synchronised batch norm;
- `bfloat16_dtypes`: the dtypes of every variable's copies on both replicas;
- `bfloat16_replicas`: the largest weight difference between the two replicas after those steps;
- `skips`: with a loss scale starting at 2^120, float32 compute, batch norm per replica, replica 0
  given only ignored labels (its gradient is weight decay alone, below `replica0_gradient_bound`,
  finite) and replica 1 the labelled half (its backward pass overflows): for each step until
  the first applied one, [global step, loss scale on replica 0, on replica 1, largest weight
  change from the start on replica 0, on replica 1];
- `applied_replicas`: the largest weight difference between the replicas after the applied step.

`python3 tests/mirrored_checks.py batch_norm`: one synchronised `BatchNorm` on activations of mean
1e3 and spread ~1, half of the batch per replica; prints one JSON line (relative errors are the
largest over the channels):
- `variance_error`: largest relative error of the synchronised batch variance (read from the
  moving variance, decay 0) against `tf.nn.moments` of the whole batch in float64 on one device;
- `mean_error`: the same for the batch mean;
- `naive_variance_error`: the same for E[x^2] - E[x]^2 from float32 sums over the two halves;
- `local_variance_gap`: how far each half's own variance is from the whole batch's (so the check
  sees statistics that were really synchronised);
- `output_error`, `gradient_error`: largest absolute error of the normalised outputs and of the
  input gradient of sum(outputs * upstream), against the float64 reference.
"""
import dataclasses
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import config as config_lib  # noqa: E402
from libs.nets.layers import BN_EPSILON, BatchNorm  # noqa: E402
from libs.runs import checkpoints  # noqa: E402
from libs.training.mirrored import mirrored_strategy  # noqa: E402
from libs.training.step import build_optimizer, build_train_step  # noqa: E402

BATCH, SIZE, FURTHER_STEPS = 4, 33, 5
BN_SHAPE, BN_MEAN = (4, 33, 33, 8), 1e3


def fixed_batch():
    """4 images whose halves differ, so per-replica statistics differ from the global ones."""
    rng = np.random.default_rng(0)
    images = rng.normal(0, 40, (BATCH, SIZE, SIZE, 3)).astype(np.float32)
    images[BATCH // 2:] += 30.0
    labels = np.zeros((BATCH, SIZE, SIZE), np.int32)
    labels[:, SIZE // 2:] = 1
    labels[:, :, : SIZE // 3] = 2
    labels[:, 0] = 255
    return images, labels


def build(config, strategy):
    with strategy.scope():
        model = checkpoints.build_model(config, strategy.num_replicas_in_sync)
        step = tf.Variable(0, dtype=tf.int64, trainable=False,
                           aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        optimizer = build_optimizer(config, step, model)
    train_step = build_train_step(model, optimizer, step, strategy, config)
    images, labels = fixed_batch()

    # Global batches, split over the replicas by the step, as the training loop feeds it.
    iterator = iter(tf.data.Dataset.from_tensors((images, labels)).repeat())
    return model, train_step, iterator


def moving_stats(model, strategy):
    """[replica][variable] numpy arrays of every moving mean and variance."""
    variables = [v for m in model.submodules if isinstance(m, BatchNorm)
                 for v in (m.moving_mean, m.moving_variance)]
    per_var = [[np.asarray(x) for x in strategy.experimental_local_results(v)]
               for v in variables]
    return [list(r) for r in zip(*per_var)]


def max_diff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


def relative_max_diff(a, b):
    return max(float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-6))
               for x, y in zip(a, b))


def relative_norm_diff(a, b):
    difference = np.sqrt(sum(float(np.sum(np.square(x - y))) for x, y in zip(a, b)))
    return difference / np.sqrt(sum(float(np.sum(np.square(x))) for x in a))


def updates(model, initial):
    return [v.numpy() - w for v, w in zip(model.trainable_variables, initial)]


def step_check():
    strategy = mirrored_strategy(cpu_devices=2)
    default = tf.distribute.get_strategy()
    config = config_lib.TrainConfig(num_layers=50, num_classes=21, batch_size=BATCH,
                                    input_size=SIZE, learning_rate=0.01, num_steps=1000,
                                    bn_decay=0.5, sync_bn=True)
    single, single_step, single_it = build(config, default)
    mirrored, mirrored_step, mirrored_it = build(config, strategy)
    initial = [v.numpy() for v in single.trainable_variables]
    initial_moving = moving_stats(single, default)[0]

    single_loss, _ = single_step(single_it)
    mirrored_loss, _ = mirrored_step(mirrored_it)
    single_delta = updates(single, initial)
    mirrored_delta = updates(mirrored, initial)
    largest_update = max(float(np.max(np.abs(d))) for d in single_delta)
    single_moving = moving_stats(single, default)[0]
    replicas = moving_stats(mirrored, strategy)

    losses = [float(mirrored_loss)]
    for _ in range(FURTHER_STEPS):
        losses.append(float(mirrored_step(mirrored_it)[0]))

    print(json.dumps({
        'replicas': strategy.num_replicas_in_sync,
        'weights': relative_norm_diff(single_delta, mirrored_delta),
        'weights_max': max_diff(single_delta, mirrored_delta) / largest_update,
        'loss': [float(single_loss), float(mirrored_loss)],
        'moving_replicas': max_diff(replicas[0], replicas[1]),
        'moving_vs_single': relative_max_diff(replicas[0], single_moving),
        'moving_change': max_diff(single_moving, initial_moving),
        'losses': losses,
    }))


def batch_norm_inputs():
    """Channel c: 1000 + c / 2 + N(0, 0.5 + c / 8); the second half of the batch is shifted by 0.5
    (c + 1) / 8, so each replica's own statistics are not the global ones."""
    rng = np.random.default_rng(0)
    channels = BN_SHAPE[-1]
    scale = 0.5 + np.arange(channels) / 8.0
    inputs = BN_MEAN + np.arange(channels) / 2.0 + rng.normal(size=BN_SHAPE) * scale
    inputs[BN_SHAPE[0] // 2:] += 0.5 * (np.arange(channels) + 1) / 8.0
    return inputs.astype(np.float32), rng.normal(size=BN_SHAPE).astype(np.float32)


def relative_error(got, want):
    """The largest element-wise |got - want| / |want|."""
    return float(np.max(np.abs(np.asarray(got, np.float64) - want) / np.abs(want)))


def batch_norm_check():
    strategy = mirrored_strategy(cpu_devices=2)
    inputs, upstream = batch_norm_inputs()
    channels = BN_SHAPE[-1]
    with strategy.scope():
        bn = BatchNorm('sync', channels, decay=0.0, sync=True)

    def replica_fn(x, dy):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = bn(x, training=True)
            loss = tf.reduce_sum(y * dy)
        return y, tape.gradient(loss, x)

    def halves(array):
        parts = np.split(array, 2)
        return strategy.experimental_distribute_values_from_function(
            lambda context: tf.constant(parts[context.replica_id_in_sync_group]))

    outputs, gradients = tf.function(lambda x, dy: strategy.run(replica_fn, args=(x, dy)))(
        halves(inputs), halves(upstream))
    outputs = np.concatenate([np.asarray(o) for o in strategy.experimental_local_results(outputs)])
    gradients = np.concatenate([np.asarray(g)
                                for g in strategy.experimental_local_results(gradients)])

    x64, dy64 = tf.constant(inputs, tf.float64), tf.constant(upstream, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(x64)
        mean, variance = tf.nn.moments(x64, axes=[0, 1, 2])
        reference = (x64 - mean) / tf.sqrt(variance + BN_EPSILON)
        loss = tf.reduce_sum(reference * dy64)
    reference_gradient = tape.gradient(loss, x64).numpy()
    mean, variance = mean.numpy(), variance.numpy()

    # The former formula: float32 sums of x and x^2 per half, added as the all-reduce adds them.
    count = float(np.prod(BN_SHAPE[:3]))
    sums = [tf.reduce_sum(part, axis=[0, 1, 2]) for part in np.split(inputs, 2)]
    squares = [tf.reduce_sum(tf.square(part), axis=[0, 1, 2]) for part in np.split(inputs, 2)]
    naive_mean = (sums[0] + sums[1]) / count
    naive_variance = (squares[0] + squares[1]) / count - tf.square(naive_mean)

    local_variances = [np.var(part.astype(np.float64), axis=(0, 1, 2))
                       for part in np.split(inputs, 2)]
    moving_means = [np.asarray(v) for v in strategy.experimental_local_results(bn.moving_mean)]
    moving_variances = [np.asarray(v)
                        for v in strategy.experimental_local_results(bn.moving_variance)]
    print(json.dumps({
        'replicas': strategy.num_replicas_in_sync,
        'mean_error': max(relative_error(m, mean) for m in moving_means),
        'variance_error': max(relative_error(v, variance) for v in moving_variances),
        'naive_variance_error': relative_error(naive_variance.numpy(), variance),
        'local_variance_gap': min(relative_error(v, variance) for v in local_variances),
        'output_error': float(np.max(np.abs(outputs - reference.numpy()))),
        'gradient_error': float(np.max(np.abs(gradients - reference_gradient))),
        'gradient_scale': float(np.max(np.abs(reference_gradient))),
    }))


def precision_check():
    from libs.training.loss_scale import DynamicLossScale
    strategy = mirrored_strategy(cpu_devices=2)
    config = config_lib.TrainConfig(num_layers=50, num_classes=21, batch_size=BATCH,
                                    input_size=SIZE, learning_rate=0.01, num_steps=1000,
                                    bn_decay=0.5, sync_bn=True, precision='bfloat16')
    model, train_step, iterator = build(config, strategy)
    losses = [float(train_step(iterator)[0]) for _ in range(3)]
    copies = [strategy.experimental_local_results(v) for v in model.variables]
    result = {
        'replicas': strategy.num_replicas_in_sync,
        'bfloat16_losses': losses,
        'bfloat16_dtypes': sorted({c.dtype.name for pair in copies for c in pair}),
        'bfloat16_replicas': max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                                 for a, b in (strategy.experimental_local_results(v)
                                              for v in model.trainable_variables)),
    }

    config = dataclasses.replace(config, precision='float32', sync_bn=False)
    images, labels = fixed_batch()
    labels[:BATCH // 2] = 255
    with strategy.scope():
        model = checkpoints.build_model(config, strategy.num_replicas_in_sync)
        step = tf.Variable(0, dtype=tf.int64, trainable=False,
                           aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        optimizer = build_optimizer(config, step, model)
        loss_scale = DynamicLossScale(initial_scale=2.0 ** 120, growth_interval=3)
    train_step = build_train_step(model, optimizer, step, strategy, config, loss_scale)
    iterator = iter(tf.data.Dataset.from_tensors((images, labels)).repeat())
    initial = [v.numpy() for v in model.trainable_variables]
    result['replica0_gradient_bound'] = (config.weight_decay * 2.0 ** 120 / 2 * max(
        float(np.max(np.abs(w))) for w in initial))

    def changes(replica):
        return max(float(np.max(np.abs(np.asarray(strategy.experimental_local_results(v)[replica])
                                       - w)))
                   for v, w in zip(model.trainable_variables, initial))

    result['skips'] = []
    while int(step.numpy()) == 0 and len(result['skips']) < 30:
        train_step(iterator)
        scales = [float(s) for s in strategy.experimental_local_results(loss_scale.scale)]
        result['skips'].append([int(step.numpy())] + scales + [changes(0), changes(1)])
    result['applied_replicas'] = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in (strategy.experimental_local_results(v) for v in model.trainable_variables))
    print(json.dumps(result))


if __name__ == '__main__':
    checks = {'step': step_check, 'batch_norm': batch_norm_check, 'precision': precision_check}
    if len(sys.argv) != 2 or sys.argv[1] not in checks:
        sys.exit(f'usage: {sys.argv[0]} {"|".join(checks)}')
    checks[sys.argv[1]]()
