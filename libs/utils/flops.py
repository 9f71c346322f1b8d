"""Floating-point operations of a traced graph, and the matmul ceiling of each precision.

The operation count is TensorFlow's own profiler (`tf.compat.v1.profiler`, float_operation), run on
a concrete function's graph: convolutions count 2 x multiply-adds, their gradients likewise, and
element-wise ops one per element. Ops without registered statistics (batch norm, resize, pad)
count 0, so the figure slightly undercounts the work the graph does.
"""
import statistics
import time

import tensorflow as tf


def count_flops(concrete_function):
    """Floating-point operations of one call of a concrete function (static shapes needed).

    Args:
        concrete_function: e.g. `tf.function(f).get_concrete_function(tf.TensorSpec([1, 65,
            65, 3]))`; every shape that reaches a convolution must be fully defined.
    Returns:
        int, the profiler's `total_float_ops`.
    """
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    options = builder(builder.float_operation()).with_empty_output().build()
    profile = tf.compat.v1.profiler.profile(graph=concrete_function.graph, options=options)
    return int(profile.total_float_ops)


def matmul_gflops(dtype=tf.float32, size=4096, repeats=5):
    """The GFLOP/s of a [size, size] x [size, size] matmul in `dtype`: a measured ceiling.

    What a dense kernel reaches on this device in this precision, in place of a peak assumed from
    the clock and the instruction set (which AVX-512 on 256-bit units, boost clocks and
    hypervisors all bend). The median of `repeats` runs after one warm-up; under load from other
    processes it drops with everything else, so compare it with steps timed in the same run.

    Args:
        dtype: tf.float32, tf.bfloat16 or tf.float16.
    """
    a = tf.cast(tf.random.stateless_normal([size, size], [0, 1]), dtype)
    b = tf.cast(tf.random.stateless_normal([size, size], [0, 2]), dtype)
    matmul = tf.function(tf.linalg.matmul)
    matmul(a, b).numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).numpy()
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(times) / 1e9
