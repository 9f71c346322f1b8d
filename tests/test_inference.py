"""Multi-scale + flip inference, against an independent reference written here in NumPy.

The reference follows tensorflow/models research/deeplab: pad the image at the bottom and right
with the mean pixel (0 after normalisation) to OS*k + 1, run the network, upsample the logits with
corners aligned to that size, crop to the image; at another scale s the image is first resized with
corners aligned to round((n - 1) s) + 1 pixels a side and the probabilities resized back. Only the
network itself is shared with the code under test; padding, resizing, cropping and averaging are
NumPy here.
"""
import io
import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from calibrated import calibrated_deeplab, photo
from libs.evaluation import inference, serving
from libs.nets.folding import FoldedDeepLabV3

NUM_CLASSES = 3


class TinyNet(tf.Module):
    """Two 3x3 convs (the second strided only at output stride 4) and a 1x1 classifier.

    Random, fixed weights: the net is not mirror-symmetric, which the flip tests rely on. Records
    the size of every input it is called with.
    """

    def __init__(self, num_classes=NUM_CLASSES, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.w1 = tf.constant(rng.normal(size=(3, 3, 3, 8)) * 0.3, tf.float32)
        self.w2 = tf.constant(rng.normal(size=(3, 3, 8, 8)) * 0.3, tf.float32)
        self.w3 = tf.constant(rng.normal(size=(1, 1, 8, num_classes)) * 0.2, tf.float32)

    def __call__(self, images, training=False, output_stride=4):
        assert output_stride in (2, 4) and not training
        net = tf.nn.relu(tf.nn.conv2d(images, self.w1, 2, 'SAME'))
        net = tf.nn.relu(tf.nn.conv2d(net, self.w2, output_stride // 2, 'SAME'))
        return tf.nn.conv2d(net, self.w3, 1, 'SAME')


class InputSizes(tf.Module):
    """Wraps a network and records the [H, W] of every input it sees (eagerly, via a py hook)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.sizes = []

    def __call__(self, images, training=False, output_stride=16):
        def record(shape):
            self.sizes.append(tuple(int(v) for v in shape))
            return shape
        shape = tf.numpy_function(record, [tf.shape(images)[1:3]], tf.int32)
        with tf.control_dependencies([shape]):
            images = tf.identity(images)
        return self.model(images, training=training, output_stride=output_stride)


def _image(height, width, seed=0):
    return np.random.default_rng(seed).normal(scale=50.0, size=(height, width, 3)).astype(
        np.float32)


def _resize_aligned(x, height, width):
    """NumPy bilinear resize of [h, w, C] to [height, width], corners aligned, float64."""
    def axis(n_in, n_out):
        source = np.zeros(n_out) if n_out == 1 else np.arange(n_out) * (n_in - 1) / (n_out - 1)
        low = np.clip(np.floor(source).astype(int), 0, n_in - 1)
        high = np.minimum(low + 1, n_in - 1)
        return low, high, source - low

    x = np.asarray(x, np.float64)
    low, high, frac = axis(x.shape[0], height)
    x = x[low] * (1 - frac)[:, None, None] + x[high] * frac[:, None, None]
    low, high, frac = axis(x.shape[1], width)
    return x[:, low] * (1 - frac)[None, :, None] + x[:, high] * frac[None, :, None]


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _reference_single(model, image, output_stride):
    """Pad to OS*k + 1, run, upsample with corners aligned, crop, softmax: [H, W, C]."""
    height, width = image.shape[:2]
    canvas = [output_stride * math.ceil((n - 1) / output_stride) + 1 for n in (height, width)]
    padded = np.zeros(canvas + [3], np.float32)
    padded[:height, :width] = image
    logits = model(tf.constant(padded[None]), training=False, output_stride=output_stride)
    logits = _resize_aligned(logits[0].numpy(), *canvas)
    return _softmax(logits[:height, :width])


def _reference_sliding(model, image, window, stride, output_stride):
    """Windows of `window` pixels a side (or the image's side if smaller) every `stride` pixels,
    plus one flush with the bottom/right edge; each window as a whole image; the average of the
    probabilities of the windows covering each pixel."""
    height, width = image.shape[:2]
    window_height, window_width = min(window, height), min(window, width)
    tops = list(range(0, height - window_height, stride)) + [height - window_height]
    lefts = list(range(0, width - window_width, stride)) + [width - window_width]
    total = np.zeros((height, width, 1))
    count = np.zeros((height, width, 1))
    for top in tops:
        for left in lefts:
            crop = image[top:top + window_height, left:left + window_width]
            total = total + np.pad(
                _reference_single(model, crop, output_stride),
                [(top, height - top - window_height), (left, width - left - window_width),
                 (0, 0)])
            count[top:top + window_height, left:left + window_width] += 1
    assert count.min() >= 1
    return total / count


def _reference(model, image, scales, flip, output_stride, window=None, stride=None):
    """The average over scales (and the mirrored image) of the per-scale procedure, whole-image
    or sliding-window."""
    height, width = image.shape[:2]
    outputs = []
    for x, mirrored in [(image, False)] + ([(image[:, ::-1], True)] if flip else []):
        for scale in scales:
            size = [round((n - 1) * scale) + 1 for n in (height, width)]
            scaled = x if scale == 1.0 else _resize_aligned(x, *size).astype(np.float32)
            if window is None:
                probabilities = _reference_single(model, scaled, output_stride)
            else:
                probabilities = _reference_sliding(model, scaled, window, stride, output_stride)
            probabilities = _resize_aligned(probabilities, height, width)
            outputs.append(probabilities[:, ::-1] if mirrored else probabilities)
    return np.mean(outputs, axis=0)


def test_canvas_sizes():
    # The examples of the reference's alignment: VOC's 375 and 500 pixel sides.
    assert inference.aligned_length(375, 16) == 385
    assert inference.aligned_length(500, 16) == 513
    assert inference.aligned_length(500, 8) == 505
    assert inference.aligned_length(513, 16) == 513
    assert inference.aligned_length(66, 8) == 73
    assert inference.aligned_length(1, 16) == 1
    assert inference.scaled_length(500, 0.5) == 251
    assert inference.scaled_length(375, 1.75) == 655  # 654.5 rounds half to even


@pytest.mark.parametrize('output_stride', [2, 4])
def test_single_scale_equals_reference_and_network_sees_aligned_sizes(output_stride):
    model = InputSizes(TinyNet())
    image = _image(65, 82)
    predictor = inference.MultiScalePredictor(model, NUM_CLASSES, output_stride=output_stride)
    probabilities = predictor.predict_probabilities(image).numpy()
    np.testing.assert_allclose(probabilities, _reference_single(model, image, output_stride),
                               rtol=0, atol=1e-5)
    canvas_width = 81 + output_stride  # 82 is not OS*k + 1: the canvas is the next one.
    assert model.sizes[0] == (65, canvas_width)


def test_multi_scale_flip_averages_aligned_probabilities():
    model = InputSizes(TinyNet())
    image = _image(65, 81)
    scales = (0.5, 0.75, 1.25)
    predictor = inference.MultiScalePredictor(model, NUM_CLASSES, output_stride=4, scales=scales,
                                              flip=True)
    probabilities = predictor.predict_probabilities(image).numpy()
    expected = _reference(model, image, scales, True, 4)
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-5)
    assert len(model.sizes) == 3 + 6  # the predictor's 3 calls, then the reference's 6
    assert all((n - 1) % 4 == 0 for size in model.sizes for n in size), model.sizes
    # Averaging the flip has teeth: without it the result differs.
    assert np.abs(expected - _reference(model, image, scales, False, 4)).max() > 0.02


def test_flip_averaging_is_mirror_symmetric():
    model = TinyNet()
    image = _image(66, 75)
    mirrored = image[:, ::-1].copy()
    flipped = inference.MultiScalePredictor(model, NUM_CLASSES, output_stride=4,
                                            scales=(0.5, 1.0), flip=True)
    np.testing.assert_allclose(flipped.predict_probabilities(mirrored).numpy(),
                               flipped.predict_probabilities(image).numpy()[:, ::-1],
                               rtol=0, atol=1e-5)
    # Without flip the stand-in is far from symmetric, so the check above has teeth.
    plain = inference.MultiScalePredictor(model, NUM_CLASSES, output_stride=4, scales=(0.5, 1.0))
    difference = np.abs(plain.predict_probabilities(mirrored).numpy()
                        - plain.predict_probabilities(image).numpy()[:, ::-1])
    assert difference.max() > 0.02


def test_traced_once_across_image_sizes():
    predictor = inference.MultiScalePredictor(TinyNet(), NUM_CLASSES, output_stride=4,
                                              scales=(0.5, 0.75, 1.25), flip=True)
    for height, width in [(65, 81), (97, 65), (70, 70)]:
        probabilities = predictor.predict_probabilities(_image(height, width))
        assert probabilities.shape == (height, width, NUM_CLASSES)
        np.testing.assert_allclose(probabilities.numpy().sum(-1), 1.0, atol=1e-5)
    assert predictor.trace_count == 1


@pytest.mark.parametrize('height,width,scales', [
    (65, 67, (0.5, 0.75, 1.75)),
    (3, 5, (0.25, 1.5)),  # scaled sides of 1 pixel
])
def test_output_size_equals_input_size(height, width, scales):
    predictor = inference.MultiScalePredictor(TinyNet(), NUM_CLASSES, output_stride=4,
                                              scales=scales, flip=True)
    image = _image(height, width)
    prediction = predictor.predict(image)
    assert prediction.dtype == tf.int32
    assert prediction.shape == (height, width)
    np.testing.assert_allclose(
        predictor.predict_probabilities(image).numpy(),
        _reference(predictor.model, image, scales, True, 4), rtol=0, atol=1e-5)


@pytest.mark.parametrize('scales', [(), (1.0, 0.0), (-0.5,), (float('nan'),), (float('inf'),)])
def test_rejects_bad_scales(scales):
    with pytest.raises(ValueError, match='scales'):
        inference.MultiScalePredictor(TinyNet(), NUM_CLASSES, scales=scales)


SIZES = [(500, 375), (375, 500), (97, 66), (65, 65)]


@pytest.mark.slow
@pytest.mark.parametrize('output_stride', [8, 16])
def test_deeplab_evaluate_path_and_saved_model_equal_reference(output_stride, tmp_path):
    """DeepLabV3 as evaluate.py runs it (batch norm folded) and as the SavedModel serves it, at one
    scale, on VOC-sized and small odd images, against the reference procedure."""
    model = calibrated_deeplab(output_stride)
    folded = FoldedDeepLabV3(model)
    predictor = inference.MultiScalePredictor(folded, model.num_classes, output_stride)
    saved_dir = serving.export_saved_model(model, str(tmp_path / 'saved'), [f'c{i}' for i in
                                           range(model.num_classes)],
                                           output_stride=output_stride)
    serve = tf.saved_model.load(saved_dir).signatures[serving.SIGNATURE_KEY]
    for k, (height, width) in enumerate(SIZES):
        pixels, image = photo(height, width, seed=10 + k)
        expected = _reference_single(folded, image, output_stride)
        # Not saturated: the comparison below is of probabilities, not of ones and zeros.
        assert 0.05 < expected.max(-1).mean() < 0.99
        np.testing.assert_allclose(predictor.predict_probabilities(image).numpy(), expected,
                                   rtol=0, atol=1e-5, err_msg=f'{height}x{width}')
        png = io.BytesIO()
        Image.fromarray(pixels).save(png, format='PNG')
        served = serve(**{serving.INPUT_KEY: tf.constant(png.getvalue())})
        np.testing.assert_allclose(served['probabilities'].numpy(), expected, rtol=0, atol=1e-5,
                                   err_msg=f'SavedModel {height}x{width}')
    assert predictor.trace_count == 1


def test_deeplab_multi_scale_flip():
    model = calibrated_deeplab(16, num_classes=3)
    scales = (0.75, 1.25)
    predictor = inference.MultiScalePredictor(model, 3, output_stride=16, scales=scales,
                                              flip=True)
    _, image = photo(65, 71)
    expected = _reference(model, image, scales, True, 16)
    assert 0.05 < expected.max(-1).mean() < 0.99
    # 4e-5: the scaled images differ in the last bits (float32 here, float64 in NumPy), and 50
    # random layers amplify that more than a trained network does.
    np.testing.assert_allclose(predictor.predict_probabilities(image).numpy(), expected,
                               rtol=0, atol=1e-4)
    assert predictor.predict(photo(70, 66)[1]).shape == (70, 66)
    assert predictor.trace_count == 1


def test_sliding_window_at_least_the_image_is_the_whole_image():
    model = TinyNet()
    image = _image(65, 82)
    whole = inference.MultiScalePredictor(model, NUM_CLASSES, output_stride=4,
                                          scales=(0.5, 1.0), flip=True)
    windowed = inference.MultiScalePredictor(model, NUM_CLASSES, output_stride=4,
                                             scales=(0.5, 1.0), flip=True, window=(65, 90),
                                             stride=7)
    np.testing.assert_allclose(windowed.predict_probabilities(image).numpy(),
                               whole.predict_probabilities(image).numpy(), rtol=0, atol=1e-7)


def test_sliding_window_averages_aligned_windows():
    model = InputSizes(TinyNet())
    image = _image(70, 90)
    predictor = inference.MultiScalePredictor(model, NUM_CLASSES, output_stride=4,
                                              scales=(1.0, 0.75), flip=True, window=33,
                                              stride=20)
    probabilities = predictor.predict_probabilities(image).numpy()
    # Scale 1: rows at 0, 20, 37 and columns at 0, 20, 40, 57; scale 0.75 (53 x 68 pixels):
    # rows at 0, 20 and columns at 0, 20, 35. Each window is one network call (with its flip).
    assert len(model.sizes) == 3 * 4 + 2 * 3
    assert set(model.sizes) == {(33, 33)}
    expected = _reference(model, image, (1.0, 0.75), True, 4, window=33, stride=20)
    # 2e-5 in a few pixels: TensorFlow resizes with float32 coordinates, NumPy with float64.
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=5e-5)
    # The windows change the result: the network does not see the whole image at once.
    whole = _reference(model, image, (1.0, 0.75), True, 4)
    assert np.abs(expected - whole).max() > 1e-3


def test_sliding_window_traced_once_and_smaller_images():
    model = TinyNet()
    predictor = inference.MultiScalePredictor(model, NUM_CLASSES, output_stride=4, window=33)
    for height, width in [(70, 90), (20, 100), (33, 33), (12, 9)]:
        image = _image(height, width)
        np.testing.assert_allclose(predictor.predict_probabilities(image).numpy(),
                                   _reference_sliding(model, image, 33, 22, 4), rtol=0,
                                   atol=1e-5, err_msg=f'{height}x{width}')
    assert predictor.trace_count == 1


@pytest.mark.parametrize('kwargs', [dict(window=0), dict(window=(33, -1)), dict(stride=8),
                                    dict(window=33, stride=0)])
def test_rejects_bad_windows(kwargs):
    with pytest.raises(ValueError, match='window|stride'):
        inference.MultiScalePredictor(TinyNet(), NUM_CLASSES, **kwargs)


def test_bfloat16_network_float32_probabilities():
    """The network in bfloat16 (this CPU runs it natively), the rest in float32: probabilities
    close to float32's, and the class maps almost equal."""
    model = FoldedDeepLabV3(calibrated_deeplab(16))
    _, image = photo(97, 130)
    full = inference.MultiScalePredictor(model, 5, output_stride=16, scales=(0.75, 1.0), flip=True)
    half = inference.MultiScalePredictor(model, 5, output_stride=16, scales=(0.75, 1.0), flip=True,
                                         compute_dtype=tf.bfloat16)
    expected = full.predict_probabilities(image).numpy()
    probabilities = half.predict_probabilities(image)
    assert probabilities.dtype == tf.float32
    difference = np.abs(probabilities.numpy() - expected)
    assert 0 < difference.max() < 0.1  # it did compute in another precision
    # Class maps agree where float32 is clear (top two probabilities 0.1 apart); this random
    # network has many near-ties, which a trained one has few of.
    top_two = np.sort(expected, axis=-1)[..., -2:]
    clear = top_two[..., 1] - top_two[..., 0] > 0.1
    assert clear.mean() > 0.1, clear.mean()
    same = probabilities.numpy().argmax(-1) == expected.argmax(-1)
    assert same[clear].mean() >= 0.99, same[clear].mean()
