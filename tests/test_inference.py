"""Multi-scale + flip inference, against an eager reference built from the same tiny network.

The network here is a stand-in with the DeepLabV3 call signature; the thing under test is the
predictor wrapped around it.
"""
import numpy as np
import pytest
import tensorflow as tf

from libs.evaluation import inference
from libs.nets.deeplabv3 import DeepLabV3

NUM_CLASSES = 3


class TinyNet(tf.Module):
    """Two 3x3 convs (the second strided only at output stride 4) and a 1x1 classifier.

    Random, fixed weights: the net is not mirror-symmetric, which the flip tests rely on.
    """

    def __init__(self, num_classes=NUM_CLASSES, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.w1 = tf.constant(rng.normal(size=(3, 3, 3, 8)) * 0.3, tf.float32)
        self.w2 = tf.constant(rng.normal(size=(3, 3, 8, 8)) * 0.3, tf.float32)
        self.w3 = tf.constant(rng.normal(size=(1, 1, 8, num_classes)), tf.float32)

    def __call__(self, images, training=False, output_stride=4):
        assert output_stride in (2, 4) and not training
        net = tf.nn.relu(tf.nn.conv2d(images, self.w1, 2, 'SAME'))
        net = tf.nn.relu(tf.nn.conv2d(net, self.w2, output_stride // 2, 'SAME'))
        return tf.nn.conv2d(net, self.w3, 1, 'SAME')


def _image(height, width, seed=0):
    return np.random.default_rng(seed).normal(scale=50.0, size=(height, width, 3)).astype(
        np.float32)


def _reference_probabilities(model, image, scales, flip, output_stride):
    """Eager, one input at a time: the definition of multi-scale + flip averaging."""
    height, width = image.shape[:2]
    inputs = [(image, False)] + ([(image[:, ::-1], True)] if flip else [])
    outputs = []
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        for x, mirrored in inputs:
            x = tf.compat.v1.image.resize_bilinear(x[None], size, align_corners=True)
            logits = model(x, training=False, output_stride=output_stride)
            logits = tf.compat.v1.image.resize_bilinear(logits, (height, width), align_corners=True)
            probabilities = tf.nn.softmax(logits)[0].numpy()
            outputs.append(probabilities[:, ::-1] if mirrored else probabilities)
    return np.mean(outputs, axis=0)


@pytest.mark.parametrize('output_stride', [2, 4])
def test_single_scale_without_flip_equals_plain_inference(output_stride):
    model = TinyNet()
    image = _image(65, 81)
    predictor = inference.MultiScalePredictor(model, NUM_CLASSES, output_stride=output_stride)
    logits = model(image[None], training=False, output_stride=output_stride)
    logits = tf.compat.v1.image.resize_bilinear(logits, (65, 81), align_corners=True)
    np.testing.assert_array_equal(
        predictor.predict(image).numpy(), tf.argmax(logits[0], -1, output_type=tf.int32).numpy())
    np.testing.assert_allclose(
        predictor.predict_probabilities(image).numpy(), tf.nn.softmax(logits)[0].numpy(),
        rtol=0, atol=1e-6)


def test_multi_scale_flip_averages_probabilities():
    # 65 * 0.75 = 48.75 and 81 * 1.25 = 101.25: rounding, not truncation, picks the sizes.
    model = TinyNet()
    image = _image(65, 81)
    scales = (0.75, 1.25)
    predictor = inference.MultiScalePredictor(model, NUM_CLASSES, output_stride=4, scales=scales,
                                              flip=True)
    expected = _reference_probabilities(model, image, scales, True, 4)
    np.testing.assert_allclose(predictor.predict_probabilities(image).numpy(), expected,
                               rtol=0, atol=1e-5)


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
    assert difference.max() > 0.05


def test_traced_once_across_image_sizes():
    predictor = inference.MultiScalePredictor(TinyNet(), NUM_CLASSES, output_stride=4,
                                              scales=(0.5, 0.75, 1.25), flip=True)
    for height, width in [(65, 81), (97, 65), (70, 70)]:
        probabilities = predictor.predict_probabilities(_image(height, width))
        assert probabilities.shape == (height, width, NUM_CLASSES)
        np.testing.assert_allclose(probabilities.numpy().sum(-1), 1.0, atol=1e-5)
    assert predictor.trace_count == 1


@pytest.mark.parametrize('height,width,scales', [
    (65, 67, (0.5, 0.75, 1.75)),   # odd sizes, scaled sizes 32.5 -> 32, 48.75 -> 49, 113.75 -> 114
    (3, 5, (0.25, 1.5)),           # 0.75 -> 1, 1.25 -> 1: at least one pixel
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
        _reference_probabilities(predictor.model, image, scales, True, 4), rtol=0, atol=1e-5)


def test_rejects_bad_scales():
    with pytest.raises(ValueError):
        inference.MultiScalePredictor(TinyNet(), NUM_CLASSES, scales=())
    with pytest.raises(ValueError):
        inference.MultiScalePredictor(TinyNet(), NUM_CLASSES, scales=(1.0, 0.0))


def test_deeplabv3_multi_scale_flip():
    model = DeepLabV3(num_classes=3, depth=50, output_stride=16, seed=0)
    scales = (0.75, 1.25)
    predictor = inference.MultiScalePredictor(model, 3, output_stride=16, scales=scales,
                                              flip=True)
    image = _image(65, 71)
    np.testing.assert_allclose(
        predictor.predict_probabilities(image).numpy(),
        _reference_probabilities(model, image, scales, True, 16), rtol=0, atol=1e-5)
    assert predictor.predict(_image(70, 66)).shape == (70, 66)
    assert predictor.trace_count == 1
