"""The atrous convolution with the per-tap kernel gradient against TensorFlow's dilated conv2d."""
import ctypes
import gc

import numpy as np
import pytest
import tensorflow as tf

from libs.nets.atrous import atrous_conv2d, tap_kernel_gradient
from libs.nets.layers import Conv2D


def _output_and_gradients(convolve, inputs, kernel, upstream):
    with tf.GradientTape() as tape:
        tape.watch([inputs, kernel])
        outputs = convolve(inputs, kernel)
        loss = tf.reduce_sum(tf.cast(outputs, tf.float32) * upstream)
    return [outputs] + tape.gradient(loss, [inputs, kernel])


# Rates that leave every tap on the image, some taps partly on it, off-centre taps off it in one
# direction only (rate 8 > width 7), and every off-centre tap off it (rate 12); a 5x5 and a 1x1.
@pytest.mark.parametrize('height, width, kernel_size, rate', [
    (9, 7, 3, 2), (9, 7, 3, 5), (9, 7, 3, 8), (9, 7, 3, 12), (10, 9, 5, 2), (8, 8, 1, 3)])
def test_output_and_gradients_equal_the_dilated_conv2d(height, width, kernel_size, rate):
    rng = np.random.default_rng(rate)
    inputs = tf.constant(rng.standard_normal([2, height, width, 4]), tf.float32)
    kernel = tf.constant(rng.standard_normal([kernel_size, kernel_size, 4, 3]), tf.float32)
    upstream = tf.constant(rng.standard_normal([2, height, width, 3]), tf.float32)
    expected = _output_and_gradients(
        lambda x, k: tf.nn.conv2d(x, k, 1, 'SAME', dilations=rate), inputs, kernel, upstream)
    got = _output_and_gradients(lambda x, k: atrous_conv2d(x, k, rate), inputs, kernel, upstream)
    for name, value, reference in zip(('output', 'input gradient', 'kernel gradient'), got,
                                      expected):
        np.testing.assert_allclose(value.numpy(), reference.numpy(), rtol=1e-5, atol=1e-4,
                                   err_msg=name)
    assert np.abs(got[2].numpy()).max() > 0.1  # a gradient that vanished would pass the above


def test_bfloat16_kernel_gradient_is_float32s_to_bfloat16_rounding():
    """In bfloat16 the products accumulate like TensorFlow's own op's: within bfloat16's 2^-8."""
    rng = np.random.default_rng(0)
    inputs = tf.constant(rng.standard_normal([2, 21, 21, 64]), tf.float32)
    kernel = tf.constant(rng.standard_normal([3, 3, 64, 16]) * 0.1, tf.float32)
    upstream = tf.constant(rng.standard_normal([2, 21, 21, 16]), tf.float32)
    rounded = [tf.cast(tf.cast(v, tf.bfloat16), tf.float32) for v in (inputs, kernel)]
    _, _, reference = _output_and_gradients(
        lambda x, k: tf.nn.conv2d(x, k, 1, 'SAME', dilations=12), *rounded, upstream)
    _, _, got = _output_and_gradients(
        lambda x, k: atrous_conv2d(x, k, 12), *[tf.cast(v, tf.bfloat16) for v in rounded],
        upstream)
    assert got.dtype == tf.bfloat16
    relative = (np.linalg.norm(tf.cast(got, tf.float32).numpy() - reference.numpy())
                / np.linalg.norm(reference.numpy()))
    assert relative < 2 ** -8, relative


def _gradient_op_types(rate):
    conv = Conv2D('conv', 3, 8, 8, np.random.default_rng(0))
    inputs = tf.TensorSpec([1, 13, 13, 8], tf.float32)

    @tf.function
    def kernel_gradient(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(conv(x, rate=rate))
        return tape.gradient(loss, conv.kernel)

    graph = kernel_gradient.get_concrete_function(inputs).graph
    return {op.type for op in graph.get_operations()}


def test_conv2d_layer_takes_the_tap_gradient_only_when_atrous():
    atrous, plain = _gradient_op_types(rate=6), _gradient_op_types(rate=1)
    assert 'Conv2DBackpropFilter' not in atrous and 'MatMul' in atrous
    assert 'Conv2DBackpropFilter' in plain


def test_gradient_ops_are_named_like_the_tapes_own_in_a_replica_scope():
    """Grappler sorts the summands of a tensor's gradients by name. With the custom gradient's ops
    named 'replica_1/...' beside the tape's 'gradient_tape/replica_1/...', replica 1 of
    MirroredStrategy summed the ASPP input's gradient in another order than a worker of
    MultiWorkerMirroredStrategy, and the two trainings parted in the last bit (the slow
    tests/test_multi_worker.py shows the consequence; this shows the cause, cheaply)."""
    rng = np.random.default_rng(0)
    pointwise, atrous = Conv2D('aspp0', 1, 8, 8, rng), Conv2D('aspp1', 3, 8, 8, rng)

    @tf.function
    def input_gradient(x):
        with tf.name_scope('replica_1'), tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(pointwise(x) * atrous(x, rate=2))
        return tape.gradient(loss, x)

    graph = input_gradient.get_concrete_function(tf.TensorSpec([1, 9, 9, 8], tf.float32)).graph
    sums = [op for op in graph.get_operations()
            if op.type == 'AddN' and any(i.op.type == 'Conv2DBackpropInput' for i in op.inputs)]
    assert len(sums) == 1, [op.name for op in sums]
    summands = [i.op.name for i in sums[0].inputs]
    assert len(summands) == 2 and all(
        name.startswith('gradient_tape/replica_1/') for name in summands), summands


def test_kernel_gradient_of_unknown_spatial_size_equals_the_known_sizes():
    """Window bounds are Python integers when the size is known while tracing, tensors when it is
    not (a graph traced for any image size); both give the same gradient."""
    rng = np.random.default_rng(3)
    inputs = tf.constant(rng.standard_normal([2, 9, 7, 4]), tf.float32)
    upstream = tf.constant(rng.standard_normal([2, 9, 7, 3]), tf.float32)
    known = tap_kernel_gradient(inputs, upstream, 3, 5)
    unknown = tf.function(lambda x, g: tap_kernel_gradient(x, g, 3, 5), input_signature=[
        tf.TensorSpec([None, None, None, 4]), tf.TensorSpec([None, None, None, 3])])
    assert unknown.get_concrete_function().structured_outputs.shape.as_list() == [3, 3, 4, 3]
    np.testing.assert_array_equal(unknown(inputs, upstream).numpy(), known.numpy())
    assert np.abs(known.numpy()).max() > 0.1


def _resident_mb():
    """This process's resident memory, after the collector and glibc returned what is free."""
    gc.collect()
    ctypes.CDLL('libc.so.6').malloc_trim(0)
    with open('/proc/self/status') as status:
        return next(int(line.split()[1]) for line in status if line.startswith('VmRSS')) / 1024


def test_inference_functions_free_their_weights_with_their_model():
    """With no tape recording, the convolution takes no custom gradient: graph-mode
    `tf.custom_gradient` registers its gradient process-wide for good, holding the traced graph
    and the weights it captured (a ResNet-50 DeepLabV3's 160 MB per inference function traced).
    Three models of 3 x 37 MB traced and dropped in turn would keep 340 MB alive. (Each is
    collected before the next is built: TensorFlow's oneDNN allocator keeps its pool at the
    largest size it ever held.)"""
    rng = np.random.default_rng(0)

    def trace_and_drop():
        convs = [Conv2D(f'conv{i}', 3, 1024, 1024, rng) for i in range(3)]

        @tf.function
        def infer(x):
            for conv in convs:
                x = conv(x, rate=2)
            return x

        assert infer(tf.ones([1, 5, 5, 1024])).shape == (1, 5, 5, 1024)
        graph = infer.get_concrete_function(tf.TensorSpec([1, 5, 5, 1024])).graph
        return {op.type for op in graph.get_operations()}

    # The situation: the graph convolves with dilations and has no gradient ops.
    assert 'Conv2D' in trace_and_drop()
    before = _resident_mb()
    for _ in range(3):
        trace_and_drop()
        gc.collect()
    assert _resident_mb() - before < 120, (before, _resident_mb())
