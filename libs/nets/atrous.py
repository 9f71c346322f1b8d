"""Atrous convolution whose kernel gradient computes only the taps that see the image.

DeepLabV3's paper (section 3.3) observes that as the atrous rate approaches the feature map's size,
fewer of a 3x3 filter's taps fall on the image: with rate 18 on the 21 x 21 features of a 321 crop
at output stride 16, each off-centre tap sees a strip 3 pixels wide, and the rest of its window is
padding. oneDNN's forward convolution and input gradient skip that padding; its kernel gradient
(Conv2DBackpropFilter) does not, and runs at the cost of rate 1 whatever the rate
(docs/performance.md). Here the kernel gradient is one matrix product per tap over the window where
that tap meets the image, which is the same sum without the zeros.
"""
import tensorflow as tf
# TensorFlow's own test for an active tape, which `tf.custom_gradient` itself uses; no public
# equivalent exists.
from tensorflow.python.eager import record


def atrous_conv2d(inputs, kernel, rate):
    """A stride-1 'SAME' convolution dilated by `rate`, as `tf.nn.conv2d(..., dilations=rate)`.

    The forward pass and the input gradient are TensorFlow's own; the kernel gradient is
    `tap_kernel_gradient`. With no gradient tape recording (inference), the convolution is
    TensorFlow's alone: inside a `tf.function`, `tf.custom_gradient` registers its gradient in
    TensorFlow's process-wide gradient registry, which is never emptied and holds the traced graph
    and, through the graph's captures, every variable the graph read. Each inference function
    traced would otherwise keep its model's weights alive after the model is gone (~160 MB for a
    ResNet-50 DeepLabV3, measured).

    Args:
        inputs: [B, H, W, C_in].
        kernel: [k, k, C_in, C_out], k odd, in the dtype of `inputs`.
        rate: atrous rate, > 1.
    Returns:
        [B, H, W, C_out].
    """
    kernel_size = kernel.shape[0]
    if kernel_size % 2 == 0 or kernel.shape[1] != kernel_size:
        raise ValueError(f'atrous_conv2d takes an odd square kernel, got {kernel.shape}')
    if not record.could_possibly_record():
        return tf.nn.conv2d(inputs, kernel, 1, 'SAME', dilations=rate)

    # The gradient's ops are named as TensorFlow names those of its own gradients,
    # 'gradient_tape/<the forward pass's name scope>/...'. Grappler sorts the inputs of the AddN
    # that sums a tensor's gradients by name, so the summation order (and the last bit of the
    # sum) follows the names: under the tape's own prefix it is the same in every replica of
    # MirroredStrategy (scopes 'replica_1/', ...) and in every worker of
    # MultiWorkerMirroredStrategy (no scope). A custom gradient's ops otherwise take the scope
    # current when the tape runs it, '<replica scope>/...', and sort before or after the tape's
    # own depending on the replica.
    forward_scope = tf.get_current_name_scope()
    gradient_scope = 'gradient_tape/' + (forward_scope + '/' if forward_scope else '')

    @tf.custom_gradient
    def convolve(x, w):
        def gradient(output_gradient):
            with tf.name_scope(gradient_scope):
                input_gradient = tf.raw_ops.Conv2DBackpropInput(
                    input_sizes=tf.shape(x), filter=w, out_backprop=output_gradient,
                    strides=[1, 1, 1, 1], padding='SAME', dilations=[1, rate, rate, 1])
                return input_gradient, tap_kernel_gradient(x, output_gradient, kernel_size, rate)

        return tf.nn.conv2d(x, w, 1, 'SAME', dilations=rate), gradient

    return convolve(inputs, kernel)


def tap_kernel_gradient(inputs, output_gradient, kernel_size, rate):
    """The gradient of a 'SAME' atrous convolution's loss with respect to its kernel.

    Tap (i, j) multiplies input pixel (y + (i - k//2)·rate, x + (j - k//2)·rate) into output pixel
    (y, x); its gradient is the sum over the output pixels whose input pixel lies in the image of
    input^T · output_gradient, one [C_in, N] x [N, C_out] product. A tap whose offset reaches past
    the image in either direction contributes nothing.

    Args:
        inputs: [B, H, W, C_in].
        output_gradient: [B, H, W, C_out].
        kernel_size: k, odd.
        rate: the atrous rate.
    Returns:
        [k, k, C_in, C_out] in the dtype of `inputs`.
    """
    channels_in, channels_out = inputs.shape[-1], output_gradient.shape[-1]
    height, width = inputs.shape[1], inputs.shape[2]
    if None in (height, width, channels_in, channels_out):
        # Shapes known only when the graph runs: each window's bounds are computed then.
        channels_in, channels_out = tf.shape(inputs)[-1], tf.shape(output_gradient)[-1]
        height, width = tf.shape(inputs)[1], tf.shape(inputs)[2]
        low, high = tf.maximum, tf.minimum
    else:
        # Known when tracing (a training crop): the bounds are Python integers, which keeps the
        # graph, and the time to build and optimise it, small.
        low, high = max, min
    taps = []
    for row in range(kernel_size):
        for column in range(kernel_size):
            dy, dx = (row - kernel_size // 2) * rate, (column - kernel_size // 2) * rate
            # Output rows [top, bottom) read input rows [top + dy, bottom + dy), all inside.
            top = low(0, -dy)
            bottom = low(top, high(height, height - dy))
            left = low(0, -dx)
            right = low(left, high(width, width - dx))
            seen = tf.reshape(inputs[:, top + dy:bottom + dy, left + dx:right + dx, :],
                              [-1, channels_in])
            gradient = tf.reshape(output_gradient[:, top:bottom, left:right, :], [-1, channels_out])
            taps.append(tf.matmul(seen, gradient, transpose_a=True))
    return tf.reshape(tf.stack(taps), [kernel_size, kernel_size, channels_in, channels_out])
