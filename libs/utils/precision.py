"""The compute dtype of `--precision`: variables stay float32, the network computes in this.

float16 is refused where no GPU runs it: TensorFlow's CPU kernels have no fast float16
convolutions (docs/performance.md), and an emulated run would only look like mixed precision.
bfloat16 runs natively on CPUs with AVX512_BF16 and on Ampere and later GPUs.
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
        raise ValueError('--precision float16 needs a GPU: on CPU TensorFlow has no fast float16 '
                         'convolutions; use bfloat16 (fast on CPUs with AVX512_BF16)')
    return tf.as_dtype(precision)
