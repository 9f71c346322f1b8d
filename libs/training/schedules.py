"""Learning-rate schedule (paper, section 4.1): "poly", lr * (1 - step / num_steps) ** power."""
import tensorflow as tf


def poly_learning_rate(step, base_learning_rate, num_steps, power):
    """The poly learning rate at `step` (a number or a tensor), reaching 0 at `num_steps`.

    Computed in float64: in float32, 1 - step / num_steps loses most of its digits near the end of
    a 30k-step run. Returned as float32.
    """
    progress = tf.minimum(tf.cast(step, tf.float64) / float(num_steps), 1.0)
    return tf.cast(base_learning_rate * tf.pow(1.0 - progress, power), tf.float32)
