"""Run by tests/test_classes.py in a fresh process (the CPU must be split into logical devices
before TensorFlow initialises them): one step with class weights on one device vs
MirroredStrategy on 2 logical CPU devices.

`python3 tests/class_weight_checks.py`: the same ResNet-50 DeepLabV3 (batch norm frozen, so that
each replica's forward pass is exactly one device's on its half), the same batch of 4 images, one
step with class weights (0.5, 1, 4); prints one JSON line:
- `loss`: the first-step losses, one device and mirrored;
- `naive_loss`: the loss if each replica normalised by its own summed weights and the replicas
  averaged (what the all-reduced weight sum avoids), from one device's logits;
- `weight_sums`: the summed weights of each replica's half of the batch;
- `update`: the difference of the two weight updates relative to one device's (norms over all
  trainable variables), and `update_norm`, one device's.
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import config as config_lib  # noqa: E402
from libs.runs import checkpoints  # noqa: E402
from libs.training.losses import masked_cross_entropy_sum  # noqa: E402
from libs.training.mirrored import mirrored_strategy  # noqa: E402
from libs.training.step import build_optimizer, build_train_step  # noqa: E402

BATCH, SIZE, WEIGHTS = 4, 33, (0.5, 1.0, 4.0)


def weighted_batch():
    """The first half mostly class 2 (weight 4), the second mostly class 0 (weight 0.5): the
    replicas' weight sums differ eightfold."""
    rng = np.random.default_rng(0)
    images = rng.normal(0, 40, (BATCH, SIZE, SIZE, 3)).astype(np.float32)
    labels = np.zeros((BATCH, SIZE, SIZE), np.int32)
    labels[:BATCH // 2] = 2
    labels[:BATCH // 2, :, :5] = 1
    labels[BATCH // 2:, :, :5] = 1
    labels[:, 0] = 255
    return images, labels


def build(config, strategy, images, labels):
    with strategy.scope():
        model = checkpoints.build_model(config, strategy.num_replicas_in_sync)
        step = tf.Variable(0, dtype=tf.int64, trainable=False,
                           aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        optimizer = build_optimizer(config, step, model)
    train_step = build_train_step(model, optimizer, step, strategy, config)
    iterator = iter(tf.data.Dataset.from_tensors((images, labels)).repeat())
    return model, train_step, iterator


def main():
    strategy = mirrored_strategy(cpu_devices=2)
    config = config_lib.TrainConfig(num_layers=50, num_classes=3, batch_size=BATCH,
                                    input_size=SIZE, learning_rate=0.01, num_steps=1000,
                                    freeze_bn=True, weight_decay=0.0, class_weights='file',
                                    class_weight_values=WEIGHTS)
    images, labels = weighted_batch()
    single, single_step, single_it = build(config, tf.distribute.get_strategy(), images, labels)
    mirrored, mirrored_step, mirrored_it = build(config, strategy, images, labels)
    initial = [v.numpy() for v in single.trainable_variables]

    halves = []
    for part in (slice(0, BATCH // 2), slice(BATCH // 2, BATCH)):
        logits = single(tf.constant(images[part]), training=True)
        loss_sum, weight_sum, _ = masked_cross_entropy_sum(logits, tf.constant(labels[part]),
                                                           255, WEIGHTS)
        halves.append((float(loss_sum), float(weight_sum)))

    single_loss, _ = single_step(single_it)
    mirrored_loss, _ = mirrored_step(mirrored_it)
    single_update = [v.numpy() - w for v, w in zip(single.trainable_variables, initial)]
    mirrored_update = [v.numpy() - w for v, w in zip(mirrored.trainable_variables, initial)]
    update_norm = np.sqrt(sum(float(np.sum(np.square(u))) for u in single_update))
    difference = np.sqrt(sum(float(np.sum(np.square(a - b)))
                             for a, b in zip(mirrored_update, single_update)))
    print(json.dumps({
        'replicas': strategy.num_replicas_in_sync,
        'loss': [float(single_loss), float(mirrored_loss)],
        'naive_loss': float(np.mean([loss / weight for loss, weight in halves])),
        'weight_sums': [weight for _, weight in halves],
        'update': difference / update_norm,
        'update_norm': update_norm,
    }))


if __name__ == '__main__':
    main()
