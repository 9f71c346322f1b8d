"""Slim's initialiser by its distribution; batch norm in training mode, fused or not, against the
textbook formula; atrous depthwise convolutions against TensorFlow's space-to-batch route."""
import math

import numpy as np
import pytest
import tensorflow as tf

from libs.nets import layers
from libs.nets.layers import (BN_EPSILON, NATIVE_DEPTHWISE_RATE_MAX, BatchNorm, DepthwiseConv2D,
                              slim_variance_scaling)

KERNEL = [3, 3, 256, 512]  # 1.2M weights: the sample std is then known to ~0.1%.


def truncated_unit_normal_std():
    """The standard deviation of N(0, 1) truncated to (-2, 2): sqrt(1 - 2 * 2 phi(2) / Z)."""
    density = math.exp(-2.0) / math.sqrt(2.0 * math.pi)
    mass = math.erf(2.0 / math.sqrt(2.0))
    return math.sqrt(1.0 - 4.0 * density / mass)


def test_slim_variance_scaling_is_a_resampled_truncated_normal():
    """slim's truncated_normal(0, sqrt(1.3 * 2 / fan_in)): nothing at or beyond 2 stddev, no pile of
    values at the bound (a clipped normal puts 4.6% there), and the truncated normal's std."""
    weights = slim_variance_scaling(KERNEL, np.random.default_rng(0)).astype(np.float64)
    stddev = math.sqrt(1.3 * 2.0 / (3 * 3 * 256))
    assert weights.shape == tuple(KERNEL)
    largest = np.max(np.abs(weights))
    assert largest < 2.0 * stddev
    assert largest > 1.99 * stddev  # the tail is there, not cut short
    at_the_bound = np.mean(np.abs(weights) > largest * (1 - 1e-6))
    assert at_the_bound < 1e-5, at_the_bound
    # 0.8796 x the parameter: 1.003 x He's sqrt(2 / fan_in). Clipping gave 1.09x.
    assert np.std(weights) == pytest.approx(stddev * truncated_unit_normal_std(), rel=0.005)
    assert abs(np.mean(weights)) < 0.005 * stddev
    # Within one stddev: (Phi(1) - Phi(-1)) / (Phi(2) - Phi(-2)) of the mass.
    inner = math.erf(1.0 / math.sqrt(2.0)) / math.erf(2.0 / math.sqrt(2.0))
    assert np.mean(np.abs(weights) < stddev) == pytest.approx(inner, abs=0.002)


def test_slim_variance_scaling_is_reproducible_from_the_generator():
    first = slim_variance_scaling(KERNEL, np.random.default_rng(5))
    again = slim_variance_scaling(KERNEL, np.random.default_rng(5))
    other = slim_variance_scaling(KERNEL, np.random.default_rng(6))
    assert first.dtype == np.float32
    assert np.array_equal(first, again)
    assert abs(np.corrcoef(first.ravel(), other.ravel())[0, 1]) < 0.01  # independent draws


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


@pytest.mark.parametrize('rate', [2, NATIVE_DEPTHWISE_RATE_MAX, NATIVE_DEPTHWISE_RATE_MAX + 1, 12])
def test_atrous_depthwise_convolution_matches_space_to_batch(rate):
    conv = DepthwiseConv2D('dw', 3, 8, np.random.default_rng(3))
    images = tf.random.stateless_normal([2, 17, 19, 8], seed=[1, rate])
    expected = tf.nn.depthwise_conv2d(images, conv.kernel, [1, 1, 1, 1], 'SAME',
                                      dilations=[rate, rate])
    np.testing.assert_allclose(conv(images, rate=rate).numpy(), expected.numpy(), rtol=1e-5,
                               atol=1e-5)
    # At inference, the op's own dilations up to the limit; beyond it, space-to-batch.
    ops = {op.type for op in tf.function(lambda x: conv(x, rate=rate)).get_concrete_function(
        tf.TensorSpec(images.shape)).graph.get_operations()}
    assert ('SpaceToBatchND' in ops) == (rate > NATIVE_DEPTHWISE_RATE_MAX), ops


def test_atrous_depthwise_gradients_are_space_to_batch_ones():
    """TensorFlow 2.21's gradients of the op's own dilations are wrong on the CPU (the first
    check below); under a tape the layer takes the space-to-batch route, whose are right."""
    conv = DepthwiseConv2D('dw', 3, 8, np.random.default_rng(3))
    images = tf.random.stateless_normal([2, 17, 19, 8], seed=[1, 2])

    def gradients(forward):
        with tf.GradientTape() as tape:
            tape.watch(images)
            outputs = forward()
            loss = tf.reduce_sum(outputs * outputs)
        return [g.numpy() for g in tape.gradient(loss, [images, conv.kernel])]

    def native():
        return tf.raw_ops.DepthwiseConv2dNative(input=images, filter=conv.kernel,
                                                strides=[1, 1, 1, 1], padding='SAME',
                                                dilations=[1, 2, 2, 1])

    def space_to_batch():
        return tf.nn.depthwise_conv2d(images, conv.kernel, [1, 1, 1, 1], 'SAME',
                                      dilations=[2, 2])

    wrong, right = gradients(native), gradients(space_to_batch)
    assert np.abs(wrong[0] - right[0]).max() > 1.0  # if this fails, TensorFlow fixed its op
    # Numerical check of the space-to-batch gradient against a central difference.
    got = gradients(lambda: conv(images, rate=2))
    for g, r in zip(got, right):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-4)
    index = (1, 5, 7, 3)
    step = np.zeros(images.shape, np.float32)
    step[index] = 1e-2
    loss = lambda x: float(tf.reduce_sum(tf.nn.depthwise_conv2d(
        x, conv.kernel, [1, 1, 1, 1], 'SAME', dilations=[2, 2]) ** 2))
    numeric = (loss(images + step) - loss(images - step)) / 2e-2
    assert abs(numeric - got[0][index]) < 1e-2 * max(1.0, abs(numeric))
