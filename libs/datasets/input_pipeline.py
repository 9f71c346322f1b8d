"""tf.data pipelines over the TFRecord shards: training (augmented crops) and evaluation.

Normalisation is the network's (`libs/utils/preprocessing.py`): slim's vgg / resnet_v1 ImageNet
preprocessing by default, which the resnet_v1 checkpoints were trained with (RGB channel order,
per-channel mean subtraction, no scaling), or [-1, 1] for MobileNetV2, Xception and the beta
ResNets. Either way the mean pixel becomes 0.

Training augmentation (DeepLabV3 section 4): random scale in [0.5, 2.0], random left-right
mirror, padding up to the crop (image with the mean pixel, label with the ignore label), random
crop of 513 x 513.
"""
import os

import tensorflow as tf

from libs.datasets import tfrecord
from libs.utils.preprocessing import IMAGENET_MEAN

MEAN_RGB = IMAGENET_MEAN.mean
AUTOTUNE = tf.data.AUTOTUNE


def normalize(image, preprocessing=IMAGENET_MEAN):
    """The network's normalisation (`Preprocessing`); the mean pixel becomes 0.

    Padding a normalized image with 0 is therefore padding the raw image with the mean.

    Args:
        image: [..., 3] RGB, any real or integer dtype, values in 0..255.
        preprocessing: the network's `Preprocessing` (`model.preprocessing`).

    Returns:
        float32 [..., 3].
    """
    return preprocessing.normalize(image)


def _paths(file_pattern_or_paths):
    """A glob pattern (str) or a list of paths -> a non-empty list of paths, sorted for a
    pattern."""
    if isinstance(file_pattern_or_paths, (str, os.PathLike)):
        pattern = os.fspath(file_pattern_or_paths)
        paths = sorted(tf.io.gfile.glob(pattern))
        if not paths:
            raise FileNotFoundError(f'no TFRecord file matches {pattern}')
        return paths
    paths = [os.fspath(p) for p in file_pattern_or_paths]
    if not paths:
        raise ValueError('empty list of TFRecord files')
    return paths


def _pair(size):
    return (size, size) if isinstance(size, int) else tuple(size)


def _augment(example, seed, crop_size, random_scale, random_mirror, ignore_label,
             preprocessing):
    """One training crop from a parsed example.

    Args:
        example: `tfrecord.parse_example` output (image uint8 [H, W, 3], label int32 [H, W]).
        seed: int64 [2], the stateless seed of this example.
        crop_size: (crop_h, crop_w).
        random_scale: (min, max) or None.
        random_mirror: bool.
        ignore_label: label value of padding.
        preprocessing: the network's `Preprocessing`.

    Returns:
        (float32 [crop_h, crop_w, 3] normalized image, int32 [crop_h, crop_w] label).
    """
    scale_seed, mirror_seed, row_seed, col_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4))
    crop_h, crop_w = crop_size
    image = tf.cast(example['image'], tf.float32)
    label = example['label'][..., tf.newaxis]
    if random_scale is not None:
        scale = tf.random.stateless_uniform([], scale_seed, random_scale[0], random_scale[1])
        size = tf.maximum(tf.cast(tf.round(tf.cast(tf.shape(label)[:2], tf.float32) * scale),
                                  tf.int32), 1)
        image = tf.image.resize(image, size, method='bilinear')
        # Nearest keeps labels as class indices (and 255 as 255); never interpolate them.
        label = tf.image.resize(label, size, method='nearest')
    if random_mirror:
        flip = tf.random.stateless_uniform([], mirror_seed) < 0.5
        image, label = tf.cond(flip, lambda: (image[:, ::-1], label[:, ::-1]),
                               lambda: (image, label))
    # Normalizing before padding with 0 equals padding with the mean pixel, then normalizing.
    image = normalize(image, preprocessing)
    height, width = tf.shape(label)[0], tf.shape(label)[1]
    pad_h, pad_w = tf.maximum(crop_h - height, 0), tf.maximum(crop_w - width, 0)
    image = tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]])
    label = tf.pad(label, [[0, pad_h], [0, pad_w], [0, 0]], constant_values=ignore_label)
    # One window for both keeps image and label aligned.
    top = tf.random.stateless_uniform([], row_seed, 0, height + pad_h - crop_h + 1, tf.int32)
    left = tf.random.stateless_uniform([], col_seed, 0, width + pad_w - crop_w + 1, tf.int32)
    image = tf.slice(image, [top, left, 0], [crop_h, crop_w, 3])
    label = tf.slice(label, [top, left, 0], [crop_h, crop_w, 1])
    return (tf.ensure_shape(image, [crop_h, crop_w, 3]),
            tf.ensure_shape(label[..., 0], [crop_h, crop_w]))


def _fold_seed(seed, salt, index):
    """A stateless seed (int64 [2]) of `seed`, a purpose `salt` and an epoch or example index."""
    key = tf.stack([tf.cast(seed, tf.int64), tf.constant(salt, tf.int64)])
    return tf.random.experimental.stateless_fold_in(key, index)


def _shuffle_seed(seed, salt, epoch):
    """An int64 scalar seed for `Dataset.shuffle`, a function of (seed, salt, epoch)."""
    return tf.random.stateless_uniform([], _fold_seed(seed, salt, epoch), minval=None,
                                       maxval=None, dtype=tf.int64)


def train_dataset(file_pattern_or_paths, batch_size, crop_size=513, random_scale=(0.5, 2.0),
                  random_mirror=True, ignore_label=255, seed=None, shuffle_buffer=1000,
                  repeat=True, num_parallel_calls=AUTOTUNE, input_context=None,
                  start_example=0, preprocessing=IMAGENET_MEAN):
    """Shuffled, augmented, batched training crops.

    With a `seed`, the stream is a function of the seed alone: epoch `e` reads the shards in an
    order and through a shuffle buffer seeded by (seed, e), and the `i`-th example of the stream
    is augmented with the stateless seed (seed, i). `start_example` then resumes the stream
    exactly: whole epochs are skipped without reading them (the record count comes from the
    files' length headers), and the rest of the current epoch is skipped as serialized records,
    before decoding. A run resumed after taking k batches, with `start_example = k * batch_size`,
    sees the batches the uninterrupted run saw from there.

    Args:
        file_pattern_or_paths: a glob pattern, e.g. 'data/train_aug-*-of-*.tfrecord', or a list
            of shard paths.
        batch_size: images per batch of this input pipeline (with `input_context`, usually
            `input_context.get_per_replica_batch_size(global_batch_size)`).
        crop_size: int or (height, width) of the crops; 513 = 16k + 1 suits output strides 8/16.
        random_scale: (min, max) range of the per-image scale factor, or None for no scaling.
        random_mirror: flip image and label left-right with probability 1/2.
        ignore_label: label of padded pixels.
        seed: int (or int64 scalar tensor) for a reproducible order and augmentation, or None.
        shuffle_buffer: records in the shuffle buffer (serialized, ~0.1 MB each for VOC).
        repeat: repeat forever (each epoch in its own order) or make one pass.
        num_parallel_calls: parallelism of reading and of decoding + augmentation.
        input_context: a `tf.distribute.InputContext`; each input pipeline reads its own subset
            of the shards.
        start_example: examples of this pipeline's stream already consumed (by a run that is
            being resumed); needs a `seed` to mean the same examples.
        preprocessing: the network's `Preprocessing` (`model.preprocessing`).

    Returns:
        A dataset of (images, labels): float32 [batch_size, crop_h, crop_w, 3] normalized
        images and int32 [batch_size, crop_h, crop_w] labels; incomplete batches are dropped.
    """
    paths = _paths(file_pattern_or_paths)
    crop_size = _pair(crop_size)
    if random_scale is not None and not 0 < random_scale[0] <= random_scale[1]:
        raise ValueError(f'random_scale must be (min, max) with 0 < min <= max, got '
                         f'{random_scale}')
    if input_context is not None and input_context.num_input_pipelines > 1:
        pipelines = input_context.num_input_pipelines
        if len(paths) < pipelines:
            raise ValueError(f'{len(paths)} shards cannot feed {pipelines} input pipelines; '
                             f'convert with at least {pipelines} shards')
        paths = paths[input_context.input_pipeline_id::pipelines]
        if seed is not None:
            seed += 1000 * input_context.input_pipeline_id  # other crops on other pipelines
    deterministic = seed is not None
    if seed is None:
        # The same structure with a seed drawn now: another stream in every run.
        seed = tf.random.uniform([], maxval=tf.int64.max, dtype=tf.int64)
    start_epoch, skip = 0, 0
    if start_example:
        num_records = tfrecord.count_records(paths)
        if not num_records:
            raise ValueError(f'no records in {", ".join(paths)}')
        start_epoch, skip = divmod(start_example, num_records)
    cycle_length = min(len(paths), 16)

    def epoch_records(epoch):
        files = tf.data.Dataset.from_tensor_slices(paths).shuffle(
            len(paths), seed=_shuffle_seed(seed, 0, epoch))
        records = files.interleave(tf.data.TFRecordDataset, cycle_length=cycle_length,
                                   num_parallel_calls=num_parallel_calls,
                                   deterministic=deterministic)
        return records.shuffle(shuffle_buffer, seed=_shuffle_seed(seed, 1, epoch))

    epochs = tf.data.Dataset.range(start_epoch, tf.int64.max if repeat else 1)
    records = epochs.flat_map(epoch_records).skip(skip)
    indices = tf.data.Dataset.range(start_example, tf.int64.max)
    dataset = tf.data.Dataset.zip((records, indices)).map(
        lambda serialized, index: _augment(
            tfrecord.parse_example(serialized), _fold_seed(seed, 2, index), crop_size,
            random_scale, random_mirror, ignore_label, preprocessing),
        num_parallel_calls=num_parallel_calls, deterministic=deterministic)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def _eval_element(serialized, preprocessing):
    example = tfrecord.parse_example(serialized)
    return {'image': normalize(example['image'], preprocessing), 'label': example['label'],
            'image_id': example['image_id']}


def eval_dataset(file_pattern_or_paths, num_parallel_calls=AUTOTUNE,
                 preprocessing=IMAGENET_MEAN):
    """Full-resolution, unpadded, unbatched examples in file order.

    Args:
        file_pattern_or_paths: a glob pattern (files taken in sorted order) or a list of paths.
        num_parallel_calls: decoding parallelism; the order stays deterministic.
        preprocessing: the network's `Preprocessing` (`model.preprocessing`).

    Returns:
        A dataset of dicts: 'image' float32 [H, W, 3] normalized, 'label' int32 [H, W],
        'image_id' tf.string scalar.
    """
    records = tf.data.TFRecordDataset(_paths(file_pattern_or_paths))
    return records.map(lambda serialized: _eval_element(serialized, preprocessing),
                       num_parallel_calls=num_parallel_calls,
                       deterministic=True).prefetch(AUTOTUNE)
