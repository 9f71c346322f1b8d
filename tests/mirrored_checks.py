"""Run by tests/test_multi_gpu.py in a fresh process (the CPU must be split into logical devices
before TensorFlow initialises them): one device vs MirroredStrategy on 2 logical CPU devices, the
same model, the same fixed batch of 4 images.

Prints one JSON line with what the test asserts on:
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
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import config as config_lib  # noqa: E402
from libs.nets.layers import BatchNorm  # noqa: E402
from libs.runs import checkpoints  # noqa: E402
from libs.training.mirrored import mirrored_strategy  # noqa: E402
from libs.training.step import build_optimizer, build_train_step  # noqa: E402

BATCH, SIZE, FURTHER_STEPS = 4, 33, 5


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
        optimizer = build_optimizer(config, step)
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


def main():
    strategy = mirrored_strategy(cpu_devices=2)
    default = tf.distribute.get_strategy()
    config = config_lib.TrainConfig(num_layers=50, batch_size=BATCH, input_size=SIZE,
                                    learning_rate=0.01, num_steps=1000, bn_decay=0.5,
                                    sync_bn=True)
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


if __name__ == '__main__':
    main()
