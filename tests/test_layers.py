"""Batch norm in training mode, fused or not, against the textbook formula."""
import numpy as np
import pytest
import tensorflow as tf

from libs.nets import layers
from libs.nets.layers import BN_EPSILON, BatchNorm


def reference(inputs, gamma, beta, moving_mean, moving_variance, decay):
    """Normalise with the biased batch moments; moving averages of the same moments."""
    mean, variance = tf.nn.moments(inputs, axes=[0, 1, 2])
    outputs = tf.nn.batch_normalization(inputs, mean, variance, beta, gamma, BN_EPSILON)
    return (outputs, moving_mean - (moving_mean - mean) * (1 - decay),
            moving_variance - (moving_variance - variance) * (1 - decay))


@pytest.mark.parametrize('fused', [True, False])
@pytest.mark.parametrize('shape', [(2, 9, 7, 8), (1, 1, 1, 8), (2, 1, 1, 8)])
def test_training_batch_norm_matches_the_formula(shape, fused, monkeypatch):
    """The fused op (default) and the unfused ops (taken under op determinism) alike."""
    monkeypatch.setattr(layers, '_op_determinism_enabled', lambda: not fused)
    rng = np.random.default_rng(0)
    bn = BatchNorm('unit', shape[-1], decay=0.9)
    bn.gamma.assign(rng.uniform(0.5, 1.5, shape[-1]).astype(np.float32))
    bn.beta.assign(rng.uniform(-1, 1, shape[-1]).astype(np.float32))
    inputs = tf.constant(rng.normal(3.0, 2.0, shape).astype(np.float32))
    upstream = tf.constant(rng.normal(size=shape).astype(np.float32))
    expected_mean, expected_variance = bn.moving_mean.numpy(), bn.moving_variance.numpy()

    with tf.GradientTape(persistent=True) as tape:
        tape.watch(inputs)
        outputs = bn(inputs, training=True)
        loss = tf.reduce_sum(outputs * upstream)
        ref, ref_mean, ref_variance = reference(inputs, bn.gamma, bn.beta, expected_mean,
                                                expected_variance, 0.9)
        ref_loss = tf.reduce_sum(ref * upstream)

    np.testing.assert_allclose(outputs.numpy(), ref.numpy(), atol=1e-4)
    np.testing.assert_allclose(bn.moving_mean.numpy(), ref_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), ref_variance.numpy(), rtol=1e-5,
                               atol=1e-6)
    for got, want in zip(tape.gradient(loss, [inputs, bn.gamma, bn.beta]),
                         tape.gradient(ref_loss, [inputs, bn.gamma, bn.beta])):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-3, atol=1e-4)
