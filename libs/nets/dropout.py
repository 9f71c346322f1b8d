"""Dropout after ASPP's projection, as the reference DeepLab trains (`concat_projection_dropout`,
keep probability 0.9 in research/deeplab/model.py), with masks a resumed or distributed run draws
exactly as the uninterrupted single-device run does.

The mask is stateless: it is a function of a seed the training step derives from the run's
random seed and the global step (which the checkpoint holds), not of a generator's state. It is
drawn for the global batch, and each replica takes its own rows of it, so N replicas of B images
drop what one device with N*B images drops.
"""
import tensorflow as tf


def replica_dropout(inputs, keep_prob, seed, replica=0, num_replicas=1):
    """Inverted dropout of this replica's slice of the global batch.

    Args:
        inputs: [B, h, w, C], B the replica's batch.
        keep_prob: the probability of keeping a value (kept values are scaled by 1 / keep_prob).
        seed: int64 [2], the step's stateless seed (`step_seed`).
        replica: this replica's index in the global batch (int or scalar tensor).
        num_replicas: replicas in the global batch.
    Returns:
        [B, h, w, C], of `inputs`' dtype.
    """
    shape = tf.shape(inputs)
    global_shape = tf.concat([shape[:1] * num_replicas, shape[1:]], axis=0)
    uniform = tf.random.stateless_uniform(global_shape, seed)
    start = tf.cast(replica, tf.int32) * shape[0]
    keep = uniform[start:start + shape[0]] < keep_prob
    return tf.where(keep, inputs * tf.cast(1.0 / keep_prob, inputs.dtype), tf.zeros_like(inputs))


def step_seed(random_seed, global_step):
    """The stateless seed, int64 [2], of a training step's dropout masks."""
    return tf.stack([tf.constant(random_seed, tf.int64), tf.cast(global_step, tf.int64)])
