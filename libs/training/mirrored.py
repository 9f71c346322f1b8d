"""The synchronous strategy of train_multi_gpu.py: `MirroredStrategy` over the GPUs of one machine,
or over logical CPU devices so that machines without GPUs run the same code.

Every replica takes `batch_size / replicas` images, gradients are all-reduced every step, and batch
norm all-reduces its batch statistics (`layers.BatchNorm(sync=True)`), so N replicas update the
weights like one device given the whole batch.
"""
import tensorflow as tf


def split_cpu(num_devices):
    """Splits the first physical CPU into `num_devices` logical devices.

    Must run before anything initialises TensorFlow's devices (creating a tensor, listing logical
    devices, building a strategy).

    Returns:
        The logical CPU device names, e.g. ['/job:localhost/replica:0/task:0/device:CPU:0', ...].
    Raises:
        ValueError: `num_devices` < 1, or TensorFlow's devices are already initialised.
    """
    if num_devices < 1:
        raise ValueError(f'--cpu-devices must be at least 1, got {num_devices}')
    cpu = tf.config.list_physical_devices('CPU')[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)])
    except RuntimeError as e:
        raise ValueError(f'--cpu-devices {num_devices}: TensorFlow already initialised its '
                         f'devices ({e}); split the CPU before using TensorFlow') from None
    return [d.name for d in tf.config.list_logical_devices('CPU')]


def mirrored_strategy(num_gpus=None, cpu_devices=None):
    """A `MirroredStrategy` over `num_gpus` GPUs, or over `cpu_devices` logical CPU devices.

    Args:
        num_gpus: GPUs to use (the first ones TensorFlow sees); None uses every visible GPU.
        cpu_devices: when set, ignore GPUs and split the CPU into this many logical devices.
    Returns:
        The strategy, with TensorFlow 2.21's default cross-device ops: collective all-reduce
        (NCCL on GPUs, ring on logical CPU devices). Each replica's all-reduce op then depends only
        on its own input, which keeps tracing the synchronised batch norm fast: with
        `ReductionToOneDevice` every all-reduce of sync BN makes `custom_gradient` walk the other
        replicas' graphs, and tracing takes about ten times longer (docs/performance.md).
    Raises:
        ValueError: fewer GPUs than asked for (the message says how many TensorFlow sees), or
            none at all.
    """
    if cpu_devices:
        devices = split_cpu(cpu_devices)
        return tf.distribute.MirroredStrategy(devices)
    gpus = tf.config.list_physical_devices('GPU')
    if num_gpus is None:
        num_gpus = len(gpus)
    if num_gpus < 1 or len(gpus) < num_gpus:
        seen = ', '.join(g.name for g in gpus) or 'none'
        raise ValueError(
            f'--num-gpus {num_gpus or "(all)"} asked for, but TensorFlow sees {len(gpus)} '
            f'GPU(s) ({seen}). Check CUDA_VISIBLE_DEVICES and the tensorflow[and-cuda] install, '
            'or use --cpu-devices N to run on logical CPU devices.')
    return tf.distribute.MirroredStrategy([f'/gpu:{i}' for i in range(num_gpus)])
