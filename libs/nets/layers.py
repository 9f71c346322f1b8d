"""Convolution and batch norm as `tf.Module`s over `tf.nn`, with TF-slim's variable names.

Each layer is created under a scope string such as `resnet_v1_101/block3/unit_7/bottleneck_v1/conv2`
and names its variables `<scope>/weights`, `<scope>/biases` and `<scope>/BatchNorm/{beta, gamma,
moving_mean, moving_variance}`, exactly as slim does, so slim's ImageNet checkpoints load by name.
"""
import numpy as np
import tensorflow as tf
from tensorflow.python.eager import record

from libs.nets.atrous import atrous_conv2d

BN_EPSILON = 1e-5  # slim's resnet_arg_scope, and the DeepLab head's.
PADDINGS = ('fixed', 'same')


def slim_variance_scaling(shape, rng):
    """TF-slim's `variance_scaling_initializer()` (factor 2, FAN_IN, not uniform), as resnet_v1 uses.

    He et al.'s initialisation ("Delving Deep into Rectifiers", 2015, section 2.2) as slim's
    `resnet_arg_scope` draws it: `truncated_normal(shape, 0, sqrt(1.3 * 2 / fan_in))` with
    `fan_in = prod(shape[:-2]) * shape[-2]`. Values beyond two standard deviations are drawn again,
    not clipped, so the weights have no mass piled up at the bounds; the truncation shrinks the
    standard deviation by 0.8796, which the 1.3 in the variance compensates (to 1.003x
    sqrt(2 / fan_in)).

    Args:
        shape: kernel shape [k, k, in, out].
        rng: a `np.random.Generator`, so a seed reproduces the whole network.
    Returns:
        float32 array of `shape`.
    """
    fan_in = int(np.prod(shape[:-1]))
    return truncated_normal(shape, np.sqrt(1.3 * 2.0 / fan_in), rng)


def truncated_normal(shape, stddev, rng):
    """`tf.truncated_normal_initializer(stddev)` as slim draws it (values past two standard
    deviations drawn again), from `rng`: the initialiser of MobileNetV2 (0.09) and of the DeepLab
    head's separable convolutions (0.33 depthwise, 0.06 pointwise)."""
    values = rng.standard_normal(size=shape)
    outside = np.abs(values) >= 2.0
    while outside.any():
        values[outside] = rng.standard_normal(size=int(outside.sum()))
        outside = np.abs(values) >= 2.0
    return (values * stddev).astype(np.float32)


def resize_aligned_corners(images, size):
    """Bilinear resize of [B, h, w, C] to `size` (H, W) with corners aligned: pixel i goes to
    i * (H - 1) / (h - 1), so the first and last rows and columns stay in place.

    TensorFlow 2's `tf.image.resize` has no corner alignment; this is the op behind TF1's
    `resize_bilinear(align_corners=True)`, which the reference DeepLab uses. Returns float32.
    """
    return tf.raw_ops.ResizeBilinear(images=images, size=size, align_corners=True,
                                     half_pixel_centers=False)


def fixed_padding(inputs, kernel_size, rate=1):
    """Pads like slim's `conv2d_same`, so a strided VALID conv samples pixels 0, s, 2s, ...

    The effective kernel `k + (k - 1)(rate - 1)` is padded by `k_eff - 1` in total, `//2` before
    and the rest after. Then features of a strided conv sit exactly on every s-th input pixel for any
    input size, which is what slim's ImageNet weights saw.

    Args:
        inputs: [B, H, W, C].
    Returns:
        [B, H + k_eff - 1, W + k_eff - 1, C].
    """
    k_eff = kernel_size + (kernel_size - 1) * (rate - 1)
    pad_total = k_eff - 1
    if pad_total == 0:
        return inputs  # a 1x1 kernel: a Pad op by zero would still copy the tensor
    pad_beg = pad_total // 2
    pad_end = pad_total - pad_beg
    return tf.pad(inputs, [[0, 0], [pad_beg, pad_end], [pad_beg, pad_end], [0, 0]])


class Conv2D(tf.Module):
    """A 2-D convolution with slim's names: `<scope>/weights` [k, k, in, out], `<scope>/biases` [out].

    Convolutions followed by batch norm have no bias. `padding` says how a strided convolution
    pads: 'fixed' like slim's `conv2d_same` (ResNet, Xception: features sit on every s-th input
    pixel for any input size), 'same' as TensorFlow's 'SAME' (MobileNetV2, whose checkpoints were
    trained so; on even sizes it pads one pixel less before).
    """

    def __init__(self, scope, kernel_size, in_channels, out_channels, rng, use_bias=False,
                 padding='fixed', stddev=None):
        super().__init__(name=None)
        self.scope, self.kernel_size, self.padding = scope, kernel_size, _checked(padding, scope)
        shape = [kernel_size, kernel_size, in_channels, out_channels]
        self.kernel = tf.Variable(
            slim_variance_scaling(shape, rng) if stddev is None
            else truncated_normal(shape, stddev, rng), name=f'{scope}/weights')
        self.bias = (tf.Variable(tf.zeros([out_channels]), name=f'{scope}/biases')
                     if use_bias else None)

    def __call__(self, inputs, stride=1, rate=1):
        """Applies the convolution.

        Stride 1 uses SAME padding (any rate); stride > 1 pads as `padding` says
        (`_strided_input`).

        Args:
            inputs: [B, H, W, in].
            stride: spatial stride.
            rate: atrous (dilation) rate.
        Returns:
            [B, ceil(H / stride), ceil(W / stride), out].
        """
        kernel = tf.cast(self.kernel, inputs.dtype)
        if stride == 1 and rate > 1:
            outputs = atrous_conv2d(inputs, kernel, rate)
        elif stride == 1:
            outputs = tf.nn.conv2d(inputs, kernel, 1, 'SAME')
        else:
            inputs, padding = _strided_input(self, inputs, stride, rate)
            outputs = tf.nn.conv2d(inputs, kernel, stride, padding)
        if self.bias is not None:
            outputs = tf.nn.bias_add(outputs, tf.cast(self.bias, outputs.dtype))
        return outputs


def _checked(padding, scope):
    if padding not in PADDINGS:
        raise ValueError(f'{scope}: padding must be one of {PADDINGS}, got {padding!r}')
    return padding


def _strided_input(conv, inputs, stride, rate):
    """(inputs, TensorFlow padding) of a strided convolution `conv` (`Conv2D` or
    `DepthwiseConv2D`): padded like slim's `conv2d_same` then 'VALID', or TensorFlow's 'SAME'."""
    if rate != 1:
        raise ValueError(f'{conv.scope}: a strided conv cannot also be atrous '
                         f'(stride={stride}, rate={rate})')
    if conv.padding == 'same':
        return inputs, 'SAME'
    return fixed_padding(inputs, conv.kernel_size), 'VALID'


# The largest rate an atrous depthwise convolution runs at inference with the op's own dilations.
# Up to it, oneDNN's kernel takes 0.5-0.7x the time of `tf.nn.depthwise_conv2d`'s space-to-batch
# route, with the same outputs; from rate 7 on it falls to a kernel 2-10x slower than that route
# (docs/performance.md, Xception-65). Never while a gradient tape records: TensorFlow 2.21's
# gradients of the dilated op are wrong on the CPU (tests/test_layers.py).
NATIVE_DEPTHWISE_RATE_MAX = 6


class DepthwiseConv2D(tf.Module):
    """A depthwise 2-D convolution with slim's names: `<scope>/depthwise_weights` [k, k, C, 1],
    `<scope>/biases` [C] (only when folded). Padding as `Conv2D`'s."""

    def __init__(self, scope, kernel_size, channels, rng, padding='fixed', stddev=0.33):
        super().__init__(name=None)
        self.scope, self.kernel_size, self.padding = scope, kernel_size, _checked(padding, scope)
        self.kernel = tf.Variable(
            truncated_normal([kernel_size, kernel_size, channels, 1], stddev, rng),
            name=f'{scope}/depthwise_weights')
        self.bias = None

    def __call__(self, inputs, stride=1, rate=1):
        """[B, H, W, C] -> [B, ceil(H / stride), ceil(W / stride), C]."""
        kernel = tf.cast(self.kernel, inputs.dtype)
        native = rate <= NATIVE_DEPTHWISE_RATE_MAX and not record.could_possibly_record()
        if stride == 1 and native:
            outputs = tf.raw_ops.DepthwiseConv2dNative(
                input=inputs, filter=kernel, strides=[1, 1, 1, 1], padding='SAME',
                dilations=[1, rate, rate, 1])
        elif stride == 1:
            outputs = tf.nn.depthwise_conv2d(inputs, kernel, [1, 1, 1, 1], 'SAME',
                                             dilations=[rate, rate])
        else:
            inputs, padding = _strided_input(self, inputs, stride, rate)
            outputs = tf.nn.depthwise_conv2d(inputs, kernel, [1, stride, stride, 1], padding)
        if self.bias is not None:
            outputs = tf.nn.bias_add(outputs, tf.cast(self.bias, outputs.dtype))
        return outputs


class BatchNorm(tf.Module):
    """Batch norm with slim's names under `<scope>/BatchNorm/`.

    Three modes (paper, section 4.1 trains with batch norm, then freezes it):
    - train: `training=True`, not frozen. Normalises with the batch statistics and updates the
      moving averages with `decay` (0.9997 in the paper). With `sync=True` and several replicas,
      the batch statistics are all-reduced across replicas, so N replicas x b images normalise like
      one batch of N*b. Otherwise one fused op normalises (and its gradient is one op), unless
      op determinism is on: the fused gradient is not bitwise reproducible.
    - frozen: `frozen=True`. Normalises with the moving statistics, which never change; gamma and
      beta are created non-trainable, so no optimiser touches them.
    - inference: `training=False`. Normalises with the moving statistics.
    """

    def __init__(self, scope, channels, decay=0.9997, frozen=False, sync=False,
                 epsilon=BN_EPSILON):
        super().__init__(name=None)
        self.scope = f'{scope}/BatchNorm'
        self.epsilon = epsilon
        self.decay = decay
        self.frozen = frozen
        self.sync = sync
        self.beta = tf.Variable(tf.zeros([channels]), trainable=not frozen,
                                name=f'{self.scope}/beta')
        self.gamma = tf.Variable(tf.ones([channels]), trainable=not frozen,
                                 name=f'{self.scope}/gamma')
        # ON_READ + MEAN: each replica keeps its own copy during a step (no cross-replica
        # traffic per update); reading outside a replica (checkpoints) averages them.
        moving = dict(trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
                      aggregation=tf.VariableAggregation.MEAN)
        self.moving_mean = tf.Variable(tf.zeros([channels]), name=f'{self.scope}/moving_mean',
                                       **moving)
        self.moving_variance = tf.Variable(tf.ones([channels]),
                                           name=f'{self.scope}/moving_variance', **moving)

    def __call__(self, inputs, training):
        """Normalises `inputs` [B, H, W, C] and returns the same shape."""
        gamma = tf.cast(self.gamma, tf.float32)
        beta = tf.cast(self.beta, tf.float32)
        if not training or self.frozen:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, mean=self.moving_mean, variance=self.moving_variance,
                epsilon=self.epsilon, is_training=False)
            return outputs
        if self._synchronised() or _op_determinism_enabled():
            mean, variance = self._batch_moments(inputs)
            outputs = tf.nn.batch_normalization(
                inputs, tf.cast(mean, inputs.dtype), tf.cast(variance, inputs.dtype),
                tf.cast(beta, inputs.dtype), tf.cast(gamma, inputs.dtype), self.epsilon)
        else:
            # One fused op (and one for its gradient) in place of the ~10 element-wise passes of
            # moments + batch_normalization (docs/performance.md).
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, epsilon=self.epsilon, is_training=True)
            # The op returns the unbiased variance, m / (m - 1) times the one it normalised with;
            # the moving average takes the biased one, as the unfused path does.
            count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], tf.float32)
            variance = variance * ((count - 1.0) / tf.maximum(count, 1.0))
        self.moving_mean.assign_sub((self.moving_mean - mean) * (1.0 - self.decay))
        self.moving_variance.assign_sub((self.moving_variance - variance) * (1.0 - self.decay))
        return outputs

    def _synchronised(self):
        """Whether batch statistics are all-reduced: `sync` on, inside a replica, with several."""
        replica = tf.distribute.get_replica_context()
        return self.sync and replica is not None and replica.num_replicas_in_sync > 1

    def _batch_moments(self, inputs):
        """Mean and (biased) variance per channel over batch and space, in float32.

        Args:
            inputs: [B, H, W, C], this replica's share of the batch.
        Returns:
            (mean [C], variance [C]), over every replica's share when `sync` is on.
        """
        x = tf.cast(inputs, tf.float32)
        if not self._synchronised():
            return tf.nn.moments(x, axes=[0, 1, 2])
        return _synchronised_moments(x, tf.distribute.get_replica_context())


def _synchronised_moments(x, replica):
    """Mean and (biased) variance per channel of every replica's `x`: three all-reduces.

    Forward, two: the sum with the pixel count (one tensor), then the sum of squared deviations
    from the global mean. Not E[x^2] - E[x]^2: with float32 activations whose mean is large
    against their spread, its two terms cancel and leave mostly rounding error. Backward, one:
    every replica's loss uses the shared statistics, so their gradients are the all-reduced sums
    g_mean and g_var of the replicas' own, and the gradient of x is
    (g_mean + 2 g_var (x - mean)) / count (the path through the mean in the variance is zero).
    Differentiating the two forward all-reduces one by one took two backward, each with its own
    graph of packing and constants (docs/performance.md, "Start-up").

    Args:
        x: float32 [B, H, W, C], this replica's share.
        replica: the `ReplicaContext`.
    Returns:
        (mean [C], variance [C]).
    """
    @tf.custom_gradient
    def moments(x):
        pixels = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), tf.float32)
        summed = replica.all_reduce(tf.distribute.ReduceOp.SUM,
                                    tf.concat([tf.reduce_sum(x, axis=[0, 1, 2]), pixels[None]], 0))
        count = summed[-1]  # every replica's pixels
        mean = summed[:-1] / count
        deviations = x - mean
        squared_deviations = replica.all_reduce(
            tf.distribute.ReduceOp.SUM, tf.reduce_sum(tf.square(deviations), axis=[0, 1, 2]))

        def gradient(g_mean, g_variance):
            g_mean, g_variance = tf.split(
                replica.all_reduce(tf.distribute.ReduceOp.SUM, tf.concat([g_mean, g_variance], 0)),
                2)
            return (g_mean + 2.0 * g_variance * deviations) / count

        return (mean, squared_deviations / count), gradient

    return moments(x)


def _op_determinism_enabled():
    """Whether `tf.config.experimental.enable_op_determinism()` is on.

    The fused batch norm's gradient (oneDNN on CPU) is not bitwise reproducible even then, so
    deterministic runs take the unfused ops. TensorFlow has no public getter for the flag.
    """
    from tensorflow.python.framework import config  # pylint: disable=g-direct-tensorflow-import
    return getattr(config, 'is_op_determinism_enabled', lambda: False)()


class ConvBN(tf.Module):
    """A convolution (`Conv2D` or `DepthwiseConv2D`), its batch norm and an activation: slim's
    `conv2d(normalizer_fn=batch_norm, activation_fn=...)`, the unit the newer networks are built
    of, and the unit `folding.fold` folds.

    Args:
        conv: the convolution, without bias.
        bn_args: keyword arguments of `BatchNorm` (decay, frozen, sync, epsilon).
        activation: e.g. `tf.nn.relu`, `tf.nn.relu6`, or None.
    """

    def __init__(self, conv, bn_args, activation=None):
        super().__init__(name=None)
        self.conv = conv
        # A depthwise kernel is [k, k, C, 1]: its output channels are its input channels.
        channels = conv.kernel.shape[2 if isinstance(conv, DepthwiseConv2D) else 3]
        self.bn = BatchNorm(conv.scope, channels, **bn_args)
        self.activation = activation

    def __call__(self, inputs, training, stride=1, rate=1):
        net = self.bn(self.conv(inputs, stride=stride, rate=rate), training)
        return self.activation(net) if self.activation is not None else net


class SeparableConvBN(tf.Module):
    """The reference DeepLab's split separable convolution: a 3x3 depthwise convolution with batch
    norm and activation under `<scope>_depthwise`, then a 1x1 convolution with batch norm and
    activation under `<scope>_pointwise` (research/deeplab `_split_separable_conv2d`, Xception's
    `separable_conv2d_same`).

    Args:
        activation: applied after both halves (None: neither, as Xception's modules but the last).
        stddevs: initialiser standard deviations of the depthwise and pointwise kernels (None for
            the pointwise: slim's variance scaling).
    """

    def __init__(self, scope, in_channels, out_channels, rng, bn_args, activation=tf.nn.relu,
                 padding='fixed', stddevs=(0.33, 0.06)):
        super().__init__(name=None)
        self.depthwise = ConvBN(DepthwiseConv2D(f'{scope}_depthwise', 3, in_channels, rng,
                                                padding=padding, stddev=stddevs[0]),
                                bn_args, activation)
        self.pointwise = ConvBN(Conv2D(f'{scope}_pointwise', 1, in_channels, out_channels, rng,
                                       stddev=stddevs[1]), bn_args, activation)

    def __call__(self, inputs, training, stride=1, rate=1):
        """[B, H, W, in] -> [B, ceil(H / stride), ceil(W / stride), out]."""
        return self.pointwise(self.depthwise(inputs, training, stride=stride, rate=rate),
                              training)
