"""Full-resolution inference with multi-scale and left-right flipped inputs.

Paper, section 4.1 (inference strategy): "we apply multi-scale inputs (with scales = {0.5, 0.75,
1.0, 1.25, 1.5, 1.75}) and also left-right flipped inputs" and "average the probabilities from each
scale and flipped image". The image is predicted at its own size; the label is never resized
(DESIGN.md, "VOC conventions").
"""
import tensorflow as tf

from libs.nets.deeplabv3 import upsample_logits


def _resize_images(images, size):
    """Bilinear resize of images [B, H, W, 3] to `size` (h, w), corners aligned.

    Corners aligned as for the logits (`upsample_logits`), so that scaling keeps the first and
    last pixels in place and a flipped image scales to the flipped scaled image.
    """
    return tf.compat.v1.image.resize_bilinear(images, size, align_corners=True)


class MultiScalePredictor:
    """Predicts one image at any size, averaging probabilities over scales and flips.

    The whole computation for one image (every scale, the flip, the upsampling and the average)
    is ONE `tf.function` with a shape-relaxed signature, traced once per predictor: VOC images
    come in many sizes and retracing per size would rebuild the network graph each time.

    Args:
        model: callable `model(images, training=False, output_stride=os)` mapping float32
            normalized images [B, H, W, 3] to logits [B, ceil(H/os), ceil(W/os), num_classes].
        num_classes: C, the number of logit channels.
        output_stride: output stride to run the model at (8 or 16 for DeepLabV3).
        scales: input scales; scale s resizes the image to (round(H*s), round(W*s)), at least
            1 pixel each way.
        flip: also predict the left-right mirrored image and average it in.
    """

    def __init__(self, model, num_classes, output_stride=16, scales=(1.0,), flip=False):
        scales = tuple(float(s) for s in scales)
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f'scales must be a non-empty list of positive numbers, got {scales}')
        self.model = model
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.scales = scales
        self.flip = flip
        self._probabilities = tf.function(
            self._compute_probabilities,
            input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])

    @property
    def trace_count(self):
        """How many times the per-image computation has been traced (1 after first use)."""
        return self._probabilities.experimental_get_tracing_count()

    def predict_probabilities(self, image):
        """Class probabilities of one image at its own size.

        Args:
            image: float32 normalized image [H, W, 3] (mean pixel subtracted), any H and W.

        Returns:
            float32 tensor [H, W, C], averaged over scales (and flips); sums to 1 over C.
        """
        return self._probabilities(image)

    def predict(self, image):
        """Class index per pixel of one image at its own size.

        Args:
            image: float32 normalized image [H, W, 3].

        Returns:
            int32 tensor [H, W].
        """
        return tf.argmax(self.predict_probabilities(image), axis=-1, output_type=tf.int32)

    def _compute_probabilities(self, image):
        """Traced body of `predict_probabilities`: image [H, W, 3] -> probabilities [H, W, C]."""
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        batch = image[tf.newaxis]
        if self.flip:
            # The mirrored copy rides in the same batch; inference batch norm uses moving
            # statistics, so the two samples do not influence each other.
            batch = tf.concat([batch, tf.reverse(batch, axis=[2])], axis=0)
        total = tf.zeros([height, width, self.num_classes], tf.float32)
        for scale in self.scales:
            # Scale 1 skips the (identity) resize so that it is exactly plain inference.
            scaled = batch if scale == 1.0 else _resize_images(
                batch, [_scaled_length(height, scale), _scaled_length(width, scale)])
            logits = self.model(scaled, training=False, output_stride=self.output_stride)
            probabilities = tf.nn.softmax(upsample_logits(logits, [height, width]), axis=-1)
            total += probabilities[0]
            if self.flip:
                total += tf.reverse(probabilities[1], axis=[1])
        return total / (len(self.scales) * (2 if self.flip else 1))


def _scaled_length(length, scale):
    """round(length * scale), at least 1, as an int32 scalar.

    float64 so that the rounding matches Python's `round` (both round half to even).
    """
    scaled = tf.round(tf.cast(length, tf.float64) * scale)
    return tf.maximum(tf.cast(scaled, tf.int32), 1)
