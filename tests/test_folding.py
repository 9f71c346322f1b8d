"""Batch norm folded into the convolutions: the same logits, at any output stride."""
import numpy as np
import pytest
import tensorflow as tf

from libs.evaluation.inference import MultiScalePredictor
from libs.nets.deeplabv3 import DeepLabV3
from libs.nets.folding import FoldedDeepLabV3
from test_nets import randomize_batch_norm


@pytest.fixture(scope='module')
def models():
    model = DeepLabV3(num_classes=5, depth=50, seed=4)
    randomize_batch_norm(model, seed=5)  # BN is then no identity: folding has work to do
    return model, FoldedDeepLabV3(model)


@pytest.mark.parametrize('output_stride', [8, 16])
def test_folded_logits_equal_the_model_logits(models, output_stride):
    model, folded = models
    images = tf.random.stateless_normal([2, 49, 37, 3], seed=[3, 4]) * 50.0
    expected = model(images, training=False, output_stride=output_stride).numpy()
    got = folded(images, output_stride=output_stride).numpy()
    assert got.shape == expected.shape
    scale = np.abs(expected).max()
    assert scale > 1.0
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * scale)


def test_folded_network_has_no_batch_norm_and_biased_convolutions(models):
    model, folded = models
    names = {v.name for v in folded.variables}
    assert not any('BatchNorm' in name for name in names)
    kernels = [n for n in names if n.endswith('/weights:0')]
    assert len(kernels) == len(model.regularized_variables)  # one per convolution
    assert {n.replace('/weights:0', '/biases:0') for n in kernels} <= names
    assert 'resnet_v1_50/block4/unit_3/bottleneck_v1/conv3/biases:0' in names


def test_folded_model_is_for_inference_only(models):
    model, folded = models
    with pytest.raises(ValueError, match='inference only'):
        folded(tf.zeros([1, 33, 33, 3]), training=True)
    assert folded.num_classes == model.num_classes
    assert folded.output_stride == model.output_stride


def test_folded_model_in_the_evaluate_path_traces_once(models):
    _, folded = models
    predictor = MultiScalePredictor(folded, 5, output_stride=16, scales=(0.75, 1.0), flip=True)
    for size in ((33, 41), (47, 29), (33, 41)):
        probabilities = predictor.predict_probabilities(tf.zeros(size + (3,)))
        assert probabilities.shape == size + (5,)
    assert predictor.trace_count == 1
