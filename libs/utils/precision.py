"""The compute dtype of `--precision`: variables stay float32, the network computes in this.

float16 is refused where no GPU runs it: TensorFlow's CPU kernels have no float16 gradient of an
atrous convolution, so float16 cannot train this network on CPU, and its float16 inference is
slower than bfloat16's (docs/performance.md). bfloat16 runs natively on CPUs with AVX512_BF16
and on Ampere and later GPUs.
"""
import tensorflow as tf


def compute_dtype(precision):
    """The `tf.DType` of 'float32', 'bfloat16' or 'float16'.

    Raises:
        ValueError: float16 without a visible GPU, or an unknown name.
    """
    if precision not in ('float32', 'bfloat16', 'float16'):
        raise ValueError(f'precision must be float32, bfloat16 or float16, got {precision!r}')
    if precision == 'float16' and not tf.config.list_physical_devices('GPU'):
        raise ValueError('--precision float16 needs a GPU: on CPU TensorFlow cannot train in it '
                         '(no float16 gradient of an atrous convolution) and infers faster in '
                         'bfloat16; use bfloat16 (fast on CPUs with AVX512_BF16)')
    return tf.as_dtype(precision)
