"""The training objective: pixel-wise softmax cross-entropy with 255 ignored, plus weight decay."""
import tensorflow as tf

from libs.nets.deeplabv3 import upsample_logits


def masked_cross_entropy_sum(logits, labels, ignore_label):
    """Sum of the softmax cross-entropy over the pixels whose label is not `ignore_label`.

    The logits are first upsampled bilinearly to the label size (the label is never downsampled).

    Args:
        logits: [B, h, w, C] at 1/OS.
        labels: int32 [B, H, W].
        ignore_label: label value (255) that contributes no loss and no gradient.
    Returns:
        (loss_sum scalar float32, valid_pixels scalar float32, upsampled logits [B, H, W, C]).
    """
    logits = tf.cast(upsample_logits(logits, tf.shape(labels)[1:3]), tf.float32)
    valid = tf.not_equal(labels, ignore_label)
    safe_labels = tf.where(valid, labels, tf.zeros_like(labels))
    pixel_loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe_labels, logits=logits)
    pixel_loss = tf.where(valid, pixel_loss, tf.zeros_like(pixel_loss))
    return tf.reduce_sum(pixel_loss), tf.reduce_sum(tf.cast(valid, tf.float32)), logits


def weight_decay_loss(variables, weight_decay):
    """`weight_decay * sum(w^2) / 2` over the given kernels, as slim's l2_regularizer."""
    if not variables or weight_decay == 0:
        return tf.constant(0.0)
    return weight_decay * tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in variables])
