"""Full-resolution inference with multi-scale and left-right flipped inputs, aligned like the
reference DeepLab evaluation.

Paper, section 4.1 (inference strategy): "we apply multi-scale inputs (with scales = {0.5, 0.75,
1.0, 1.25, 1.5, 1.75}) and also left-right flipped inputs" and "average the probabilities from each
scale and flipped image". The label is never resized (DESIGN.md, "VOC conventions").

Alignment. With slim's `conv2d_same` padding, feature i of an output-stride-OS network sits on
input pixel i * OS, and an input of OS*k + 1 pixels gives k + 1 features whose first and last land
on the first and last pixels; upsampling the logits with corners aligned then puts every feature
back on the pixel it was computed at. With any other input size, corner-aligned upsampling moves
features away from the pixels they were computed at (up to OS/2 pixels).
So, as tensorflow/models research/deeplab pads every val image to a 513 x 513 canvas, every input
the network sees here is OS*k + 1 on each side:

- scale s resizes the image with corners aligned to (round((H - 1) s) + 1, round((W - 1) s) + 1)
  pixels, so that the pixel spacing is 1/s of the original (up to the rounding of the size; at
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
import dataclasses
from typing import Optional, Tuple

import tensorflow as tf

from libs.nets.deeplabv3 import resize_aligned_corners, upsample_logits
from libs.utils.preprocessing import IMAGENET_MEAN
from libs.utils.precision import compute_dtype


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


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
    """How evaluate.py, predict.py and export.py infer (their shared flags), in one value.

    Attributes:
        scales, flip: multi-scale and mirrored inputs, probabilities averaged (section 4.1).
        window, stride: sliding-window inference (see `MultiScalePredictor`); None: whole image.
        precision: 'float32', 'bfloat16' or 'float16', the dtype the network computes in.
        eval_crop_size: the reference's fixed canvas (height, width), e.g. (513, 513) for VOC;
            None: each image on its own smallest canvas.
    """
    scales: Tuple[float, ...] = (1.0,)
    flip: bool = False
    window: Optional[int] = None
    stride: Optional[int] = None
    precision: str = 'float32'
    eval_crop_size: Optional[Tuple[int, int]] = None

    @classmethod
    def from_args(cls, args):
        """From the flags of `config.add_inference_args`."""
        return cls(tuple(args.scales), args.flip, args.crop_size, args.stride, args.precision,
                   getattr(args, 'eval_crop_size', None))

    def describe(self):
        """One phrase for log lines, e.g. 'scales [1.0], flip False, whole image, float32'."""
        if self.eval_crop_size is not None:
            windows = 'the reference\'s canvas {}x{}'.format(*self.eval_crop_size)
        elif self.window is None:
            windows = 'whole image'
        else:
            stride = self.stride or max(1, 2 * self.window // 3)
            windows = f'windows of {self.window} every {stride} px'
        return f'scales {list(self.scales)}, flip {self.flip}, {windows}, {self.precision}'

    def to_json_dict(self):
        """The fields an evaluation report records."""
        return {'scales': list(self.scales), 'flip': self.flip, 'crop_size': self.window,
                'stride': self.stride, 'precision': self.precision,
                'eval_crop_size': None if self.eval_crop_size is None
                else list(self.eval_crop_size)}

    def predictor(self, network, num_classes, output_stride):
        """A `MultiScalePredictor` of `network` with these options.

        Raises:
            ValueError: float16 without a GPU, bad scales or windows.
        """
        return MultiScalePredictor(network, num_classes, output_stride, scales=self.scales,
                                   flip=self.flip, window=self.window, stride=self.stride,
                                   compute_dtype=compute_dtype(self.precision),
                                   eval_crop_size=self.eval_crop_size)


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
        window: None for whole-image inference, or the (height, width) (or one int for both) of
            the windows of sliding-window inference, for images larger than memory or than the
            training crops (Cityscapes' 2048 x 1024). At each scale, windows of this size (in
            scaled pixels; smaller only where the scaled image is) step by `stride` over the
            scaled image, the last row and column of windows flush with its bottom and right
            edges so that every pixel is covered. Each window is predicted like a whole image
            (padded to OS*k + 1, aligned, cropped), and the probabilities of overlapping windows
            are averaged. A window at least as large as the scaled image is the whole image.
        stride: (height, width) or one int, the step between windows; default two thirds of the
            window.
        compute_dtype: dtype the network computes in (tf.float32, tf.bfloat16 or tf.float16):
            the canvas is cast to it and the logits back to float32, so upsampling, softmax and
            the averaging stay float32 whatever the network runs in.
        eval_crop_size: (height, width), each OS*k + 1: infer as the reference's evaluation
            (research/deeplab eval.py with `--eval_crop_size`, model.py
            `predict_labels_multi_scale`) does, to reproduce a published figure exactly: the
            image padded to this one canvas; at scale s the whole canvas resized (corners
            aligned) to (H - 1) * s + 1 (truncated), its logits resized to the logits size of
            scale max(1, s), then to the canvas, softmax, average, and the image's part kept.
            Image pooling then averages over the canvas's padding too. Images larger than the
            canvas are refused.
    """

    def __init__(self, model, num_classes, output_stride=16, scales=(1.0,), flip=False,
                 window=None, stride=None, compute_dtype=tf.float32, eval_crop_size=None):
        scales = tuple(float(s) for s in scales)
        if not scales or any(not 0 < s < float('inf') for s in scales):
            raise ValueError(f'scales must be a non-empty list of positive numbers, got {scales}')
        self.model = model
        # How images are normalised for this network (`libs/utils/preprocessing.py`).
        self.preprocessing = getattr(model, 'preprocessing', IMAGENET_MEAN)
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.scales = scales
        self.flip = flip
        self.compute_dtype = tf.as_dtype(compute_dtype)
        self.window = None if window is None else _pair(window, 'window')
        if self.window is None and stride is not None:
            raise ValueError('a stride needs a window (sliding-window inference)')
        self.eval_crop_size = None if eval_crop_size is None else _pair(eval_crop_size,
                                                                        'eval_crop_size')
        if self.eval_crop_size is not None:
            if window is not None:
                raise ValueError('the reference\'s canvas (eval_crop_size) and sliding windows '
                                 'do not go together')
            for side in self.eval_crop_size:
                if aligned_length(side, output_stride) != side:
                    raise ValueError(f'eval crop size {side} is not OS*k + 1 for output stride '
                                     f'{output_stride}; e.g. {aligned_length(side, output_stride)}')
        self.stride = (None if window is None else
                       _pair(stride, 'stride') if stride is not None else
                       tuple(max(1, 2 * w // 3) for w in self.window))
        # Without autograph, as the training step (`build_train_step`): the loops here are
        # Python loops over scales, and the windows' loop is an explicit `tf.while_loop`.
        self._probabilities = tf.function(
            self._compute_probabilities,
            input_signature=[tf.TensorSpec([None, None, 3], tf.float32)], autograph=False)

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
        Raises:
            ValueError: with `eval_crop_size`, an image larger than the canvas.
        """
        if self.eval_crop_size is not None and image.shape.rank == 3 and any(
                side is not None and side > limit
                for side, limit in zip(image.shape[:2], self.eval_crop_size)):
            raise ValueError('an image of {}x{} is larger than the reference\'s canvas {}x{} '
                             '(--eval-crop-size)'.format(*image.shape[:2], *self.eval_crop_size))
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
        if self.eval_crop_size is not None:
            return self._reference_canvas_probabilities(image)
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

    def _reference_canvas_probabilities(self, image):
        """`eval_crop_size`'s inference: [H, W, 3] -> [H, W, C]."""
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        canvas_height, canvas_width = self.eval_crop_size
        tf.debugging.assert_less_equal(
            tf.stack([height, width]), tf.constant([canvas_height, canvas_width]),
            message=f'an image is larger than the canvas {canvas_height}x{canvas_width}')
        canvas = tf.pad(image, [[0, canvas_height - height], [0, canvas_width - width],
                                [0, 0]])[tf.newaxis]
        if self.flip:
            canvas = tf.concat([canvas, tf.reverse(canvas, axis=[2])], axis=0)
        # The reference's `scale_dimension`: int((dim - 1) * scale + 1).
        dimension = lambda side, scale: int((side - 1) * scale + 1)
        logits_stride = getattr(self.model, 'decoder_output_stride', None) or self.output_stride
        total = 0.0
        for scale in self.scales:
            scaled = canvas if scale == 1.0 else resize_aligned_corners(
                canvas, [dimension(canvas_height, scale), dimension(canvas_width, scale)])
            logits = tf.cast(self.model(tf.cast(scaled, self.compute_dtype), training=False,
                                        output_stride=self.output_stride), tf.float32)
            top = max(1.0, scale) / logits_stride
            logits = resize_aligned_corners(
                logits, [dimension(canvas_height, top), dimension(canvas_width, top)])
            probabilities = tf.nn.softmax(
                resize_aligned_corners(logits, [canvas_height, canvas_width]), axis=-1)
            total += probabilities[0]
            if self.flip:
                total += tf.reverse(probabilities[1], axis=[1])
        total /= len(self.scales) * (2 if self.flip else 1)
        return total[:height, :width]

    def _aligned_probabilities(self, images, scale):
        """Probabilities of `images` [B, H, W, 3] at one scale, aligned as the module docstring
        says; float32 [B, H, W, C]."""
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        if scale == 1.0:
            scaled = images
        else:
            scaled = resize_aligned_corners(
                images, [scaled_length(height, scale), scaled_length(width, scale)])
        if self.window is None:
            probabilities = self._whole_image_probabilities(scaled)
        else:
            probabilities = self._sliding_window_probabilities(scaled)
        if scale != 1.0:
            probabilities = resize_aligned_corners(probabilities, [height, width])
        return probabilities

    def _whole_image_probabilities(self, images):
        """[B, h, w, 3] -> [B, h, w, C]: pad to the OS*k + 1 canvas, run the network, upsample
        the logits with corners aligned, crop, softmax."""
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        canvas_height = aligned_length(height, self.output_stride)
        canvas_width = aligned_length(width, self.output_stride)
        canvas = tf.pad(images, [[0, 0], [0, canvas_height - height],
                                 [0, canvas_width - width], [0, 0]])
        logits = self.model(tf.cast(canvas, self.compute_dtype), training=False,
                            output_stride=self.output_stride)
        logits = upsample_logits(tf.cast(logits, tf.float32), [canvas_height, canvas_width])
        return tf.nn.softmax(logits[:, :height, :width], axis=-1)

    def _sliding_window_probabilities(self, images):
        """[B, h, w, 3] -> [B, h, w, C]: the average over the windows covering each pixel."""
        shape = tf.shape(images)
        batch, height, width = shape[0], shape[1], shape[2]
        window_height = tf.minimum(self.window[0], height)
        window_width = tf.minimum(self.window[1], width)
        rows = _window_count(height, window_height, self.stride[0])
        columns = _window_count(width, window_width, self.stride[1])

        def place(values, top, left):
            """`values` [b, window_height, window_width, c] at (top, left) of an h x w zero map."""
            return tf.pad(values, [[0, 0], [top, height - top - window_height],
                                   [left, width - left - window_width], [0, 0]])

        def add_window(k, total, count):
            top = tf.minimum(k // columns * self.stride[0], height - window_height)
            left = tf.minimum(k % columns * self.stride[1], width - window_width)
            window = images[:, top:top + window_height, left:left + window_width]
            total += place(self._whole_image_probabilities(window), top, left)
            count += place(tf.ones([1, window_height, window_width, 1]), top, left)
            return k + 1, total, count

        # One window at a time (parallel_iterations=1): windows exist to bound memory.
        _, total, count = tf.while_loop(
            lambda k, total, count: k < rows * columns, add_window,
            (tf.constant(0), tf.zeros([batch, height, width, self.num_classes]),
             tf.zeros([1, height, width, 1])),
            parallel_iterations=1)
        return total / count


def _window_count(length, window, stride):
    """Windows of `window` pixels at `stride` needed to cover `length` pixels, the last flush with
    the end: 1 + ceil((length - window) / stride)."""
    return 1 + (length - window + stride - 1) // stride


def _pair(value, name):
    """An int or a pair of ints, all positive, as a (height, width) tuple."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(not isinstance(v, int) or v < 1 for v in pair):
        raise ValueError(f'{name} must be a positive int or a (height, width) pair, got {value}')
    return pair
