"""Full-resolution inference with multi-scale and left-right flipped inputs, aligned like the
reference DeepLab evaluation.

Paper, section 4.1 (inference strategy): "we apply multi-scale inputs (with scales = {0.5, 0.75,
1.0, 1.25, 1.5, 1.75}) and also left-right flipped inputs" and "average the probabilities from each
scale and flipped image". The label is never resized (DESIGN.md, "VOC conventions").

Alignment. With slim's `conv2d_same` padding, feature i of an output-stride-OS network sits on
input pixel i * OS, and an input of OS*k + 1 pixels gives k + 1 features whose first and last land
on the first and last pixels; upsampling the logits with corners aligned then puts every feature
back on the pixel it was computed at. Any other input size shifts features by up to OS/2 pixels.
So, as tensorflow/models research/deeplab pads every val image to a 513 x 513 canvas, every input
the network sees here is OS*k + 1 on each side:

- scale s resizes the image with corners aligned to (round((H - 1) s) + 1, round((W - 1) s) + 1)
  pixels, so that pixel spacing is exactly 1/s of the original in corner-aligned coordinates (at
  s = 1 the image itself, no resize);
- that is padded at the bottom and right with the mean pixel (0 after normalisation) to the
  smallest OS*k + 1 canvas that holds it (at OS 16: 375 -> 385, 500 -> 513);
- the logits are upsampled to the canvas with corners aligned, cropped to the scaled image and
  turned into probabilities, which are resized back to H x W with corners aligned (no resize at
  s = 1);
- the mirrored image goes through the same steps (its padding is also at its right) and its
  probabilities are mirrored back, which undoes the flip exactly.

The image-pooling branch of ASPP averages over the padding too, so the canvas size changes the
logits: the smallest canvas keeps the padding (and the cost) minimal. Unlike the reference, the
canvas follows each image rather than one 513 x 513 for the whole split.
"""
import tensorflow as tf

from libs.nets.deeplabv3 import resize_aligned_corners, upsample_logits


def aligned_length(length, output_stride):
    """The smallest OS*k + 1 that is at least `length` (>= 1): the canvas side for `length`.

    Works on Python ints and int32 tensors alike.
    """
    return (length + output_stride - 2) // output_stride * output_stride + 1


def scaled_length(length, scale):
    """round((length - 1) * scale) + 1: the side of an image of `length` pixels at `scale`, when
    resized with corners aligned. Python ints in, int out; int32 tensors in, int32 tensor out.

    float64 so that the rounding matches Python's `round` (both round half to even).
    """
    if isinstance(length, int):
        return round((length - 1) * scale) + 1
    scaled = tf.round(tf.cast(length - 1, tf.float64) * scale)
    return tf.cast(scaled, tf.int32) + 1


class MultiScalePredictor:
    """Predicts one image at any size, averaging probabilities over scales and flips.

    The whole computation for one image (every scale, the flip, padding, upsampling and the
    average) is ONE `tf.function` with a shape-relaxed signature, traced once per predictor: VOC
    images come in many sizes and retracing per size would rebuild the network graph each time.

    Args:
        model: callable `model(images, training=False, output_stride=os)` mapping float32
            normalized images [B, H, W, 3] to logits [B, ceil(H/os), ceil(W/os), num_classes].
        num_classes: C, the number of logit channels.
        output_stride: output stride to run the model at (8 or 16 for DeepLabV3).
        scales: input scales (see the module docstring for the sizes and the alignment).
        flip: also predict the left-right mirrored image and average it in.
    """

    def __init__(self, model, num_classes, output_stride=16, scales=(1.0,), flip=False):
        scales = tuple(float(s) for s in scales)
        if not scales or any(not 0 < s < float('inf') for s in scales):
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
        batch = image[tf.newaxis]
        if self.flip:
            # The mirrored copy rides in the same batch; inference batch norm uses moving
            # statistics, so the two samples do not influence each other.
            batch = tf.concat([batch, tf.reverse(batch, axis=[2])], axis=0)
        total = 0.0
        for scale in self.scales:
            probabilities = self._aligned_probabilities(batch, scale)
            total += probabilities[0]
            if self.flip:
                total += tf.reverse(probabilities[1], axis=[1])
        return total / (len(self.scales) * (2 if self.flip else 1))

    def _aligned_probabilities(self, images, scale):
        """Probabilities of `images` [B, H, W, 3] at one scale, aligned as the module docstring
        says; float32 [B, H, W, C]."""
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        if scale == 1.0:
            scaled, scaled_height, scaled_width = images, height, width
        else:
            scaled_height, scaled_width = scaled_length(height, scale), scaled_length(width, scale)
            scaled = resize_aligned_corners(images, [scaled_height, scaled_width])
        canvas_height = aligned_length(scaled_height, self.output_stride)
        canvas_width = aligned_length(scaled_width, self.output_stride)
        canvas = tf.pad(scaled, [[0, 0], [0, canvas_height - scaled_height],
                                 [0, canvas_width - scaled_width], [0, 0]])
        logits = self.model(canvas, training=False, output_stride=self.output_stride)
        logits = upsample_logits(logits, [canvas_height, canvas_width])
        probabilities = tf.nn.softmax(logits[:, :scaled_height, :scaled_width], axis=-1)
        if scale != 1.0:
            probabilities = resize_aligned_corners(probabilities, [height, width])
        return probabilities
