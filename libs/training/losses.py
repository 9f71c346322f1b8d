"""The training objective: pixel-wise softmax cross-entropy with 255 ignored, optionally weighted
by class (`libs/datasets/class_weights.py`), plus weight decay."""
import tensorflow as tf

from libs.nets.deeplabv3 import upsample_logits


def masked_cross_entropy_sum(logits, labels, ignore_label, class_weights=None):
    """Sum of the softmax cross-entropy over the pixels whose label is not `ignore_label`, each
    pixel weighted by its class's weight when `class_weights` is given.

    The logits are first upsampled bilinearly to the label size (the label is never downsampled).
    The caller divides the sum by the summed weights of the global batch (`weight_sum`
    all-reduced over replicas): sum(w[y] CE) / sum(w[y]); without weights, every valid pixel
    weighs 1 and this is the mean over valid pixels.

    Args:
        logits: [B, h, w, C] at 1/OS.
        labels: int32 [B, H, W].
        ignore_label: label value (255) that contributes no loss and no gradient.
        class_weights: C non-negative floats, or None for 1 each.
    Returns:
        (loss_sum scalar float32, weight_sum scalar float32: the summed weights of the valid
        pixels, upsampled logits [B, H, W, C]).
    """
    logits = tf.cast(upsample_logits(logits, tf.shape(labels)[1:3]), tf.float32)
    valid = tf.not_equal(labels, ignore_label)
    safe_labels = tf.where(valid, labels, tf.zeros_like(labels))
    pixel_loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe_labels, logits=logits)
    pixel_weight = tf.cast(valid, tf.float32)
    if class_weights is not None:
        pixel_weight *= tf.gather(tf.constant(class_weights, tf.float32), safe_labels)
    pixel_loss = tf.where(valid, pixel_loss * pixel_weight, tf.zeros_like(pixel_loss))
    return tf.reduce_sum(pixel_loss), tf.reduce_sum(pixel_weight), logits


def weight_decay_loss(variables, weight_decay):
    """`weight_decay * sum(w^2) / 2` over the given kernels, as slim's l2_regularizer."""
    if not variables or weight_decay == 0:
        return tf.constant(0.0)
    return weight_decay * tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in variables])
