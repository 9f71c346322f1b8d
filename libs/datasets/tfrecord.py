"""The TFRecord Example schema of tensorflow/models research/deeplab (`build_data.py`).

Records written here and records written by that project are interchangeable:

    image/encoded                     the image file's bytes, never re-encoded
    image/filename                    the image id, e.g. b'2007_000032'
    image/format                      b'jpeg' or b'png', from the bytes themselves
    image/height, image/width         int64
    image/channels                    int64, 3
    image/segmentation/class/encoded  single-channel PNG of class indices (255 = ignore)
    image/segmentation/class/format   b'png'

The label PNG must be greyscale (mode 'L'): TensorFlow's PNG decoder expands a palette ('P')
PNG to its colours, so decoding a palette label in the graph would give colours, not class
indices. That is why deeplab's own scripts strip the colormap first (`SegmentationClassRaw`).

A split on disk is a set of `{split}-%05d-of-%05d.tfrecord` shards (`list_shards`). A conversion
(`shards.write_splits`) renames its shards into place following a journal of renames, kept here
(`write_journal`, `apply_journal`): a reader completes the renames of a conversion killed midway
(`finish_interrupted_renames`) before it lists a split.
"""
import contextlib
import json
import logging
import os
import re
import socket

import tensorflow as tf

from libs.utils.filesystem import describe
from libs.utils.processes import alive

logger = logging.getLogger(__name__)

FEATURES = {
    'image/encoded': tf.io.FixedLenFeature((), tf.string),
    'image/filename': tf.io.FixedLenFeature((), tf.string),
    'image/format': tf.io.FixedLenFeature((), tf.string),
    'image/height': tf.io.FixedLenFeature((), tf.int64),
    'image/width': tf.io.FixedLenFeature((), tf.int64),
    'image/channels': tf.io.FixedLenFeature((), tf.int64),
    'image/segmentation/class/encoded': tf.io.FixedLenFeature((), tf.string),
    'image/segmentation/class/format': tf.io.FixedLenFeature((), tf.string),
}

IMAGE_FORMATS = ('jpeg', 'png')

_SHARD_RE = re.compile(r'^(?P<split>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.tfrecord$')


def _bytes(value):
    if isinstance(value, str):
        value = value.encode()
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def make_example(image_bytes, image_format, image_id, height, width, label_png_bytes):
    """Builds one record.

    Args:
        image_bytes: the encoded image file, stored as it is.
        image_format: 'jpeg' or 'png' (str or bytes), the format of `image_bytes`.
        image_id: the VOC id (str or bytes), e.g. '2007_000032'.
        height: image height in pixels.
        width: image width in pixels.
        label_png_bytes: a greyscale PNG of class indices, [height, width].

    Returns:
        A `tf.train.Example`.
    """
    fmt = image_format.decode() if isinstance(image_format, bytes) else image_format
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f'{image_id}: image format {fmt!r} is not one of {IMAGE_FORMATS}')
    return tf.train.Example(features=tf.train.Features(feature={
        'image/encoded': _bytes(image_bytes),
        'image/filename': _bytes(image_id),
        'image/format': _bytes(fmt),
        'image/height': _int64(height),
        'image/width': _int64(width),
        'image/channels': _int64(3),
        'image/segmentation/class/encoded': _bytes(label_png_bytes),
        'image/segmentation/class/format': _bytes('png'),
    }))


def parse_example(serialized):
    """Parses and decodes one serialized record; usable inside `tf.data` maps.

    Args:
        serialized: scalar tf.string.

    Returns:
        dict with
            'image': uint8 [H, W, 3],
            'label': int32 [H, W], class indices with 255 = ignore,
            'image_id': tf.string scalar,
            'height', 'width': int32 scalars.
    """
    features = tf.io.parse_single_example(serialized, FEATURES)
    image = tf.io.decode_image(features['image/encoded'], channels=3, expand_animations=False)
    image = tf.ensure_shape(image, [None, None, 3])
    label = tf.io.decode_png(features['image/segmentation/class/encoded'], channels=1)
    label = tf.cast(tf.squeeze(tf.ensure_shape(label, [None, None, 1]), axis=-1), tf.int32)
    return {
        'image': image,
        'label': label,
        'image_id': features['image/filename'],
        'height': tf.cast(features['image/height'], tf.int32),
        'width': tf.cast(features['image/width'], tf.int32),
    }


def shard_name(split, i, n):
    """File name of shard `i` of `n`, e.g. 'train-00001-of-00004.tfrecord'."""
    return f'{split}-{i:05d}-of-{n:05d}.tfrecord'


def _shards_by_split(data_dir):
    """{split: [(index, count, file name)]} for every shard file in `data_dir`."""
    found = {}
    for name in os.listdir(data_dir):
        match = _SHARD_RE.match(name)
        if match:
            found.setdefault(match['split'], []).append(
                (int(match['index']), int(match['count']), name))
    return found


def list_shards(data_dir, split):
    """Sorted paths of the complete shard set `{split}-*-of-*.tfrecord` in `data_dir`.

    Raises:
        FileNotFoundError: the folder is missing, holds no shard of `split` (the message lists
            the splits it does hold), or the set is incomplete or mixes shard counts, or a killed
            conversion's renames (`finish_interrupted_renames`, completed here first)
            cannot be completed.
    """
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f'TFRecord folder not found: {data_dir}')
    try:
        finish_interrupted_renames(data_dir)
    except OSError as e:
        raise FileNotFoundError(
            f'a conversion into {data_dir} was killed while renaming its shards, which may mix '
            f'two conversions until its renames are completed, and this process cannot complete '
            f'them ({describe(e)}); run this again as a user who can write there') from None
    found = _shards_by_split(data_dir)
    shards = found.get(split)
    if not shards:
        there = ', '.join(sorted(found)) or 'none'
        raise FileNotFoundError(
            f'no TFRecord shards for split {split!r} in {data_dir} '
            f'(expected {shard_name(split, 0, 4)} and so on; splits there: {there})')
    counts = sorted({count for _, count, _ in shards})
    if len(counts) > 1:
        raise FileNotFoundError(
            f'shards of split {split!r} in {data_dir} mix shard counts {counts}; '
            'remove the stale set and convert again')
    count = counts[0]
    indices = {index for index, _, _ in shards}
    missing = sorted(set(range(count)) - indices)
    if missing or max(indices) >= count:
        names = ', '.join(shard_name(split, i, count) for i in missing) or 'none'
        raise FileNotFoundError(f'incomplete or inconsistent shard set for split {split!r} in '
                                f'{data_dir}: missing {names}')
    return [os.path.join(data_dir, name) for _, _, name in sorted(shards)]


def count_records(paths):
    """The number of records in TFRecord files, read from the length headers only.

    A TFRecord is a uint64 length, a uint32 CRC of it, the data and a uint32 CRC of the data;
    seeking over the data makes counting a split of any size cost a few reads per record.

    Args:
        paths: TFRecord file paths.
    Returns:
        int.
    Raises:
        ValueError: naming the file, when one ends inside a record.
    """
    total = 0
    for path in paths:
        size = tf.io.gfile.stat(path).length
        with tf.io.gfile.GFile(path, 'rb') as f:
            position = 0
            while position < size:
                header = f.read(12)
                length = int.from_bytes(header[:8], 'little') if len(header) == 12 else size
                position += 12 + length + 4
                if position > size:
                    raise ValueError(f'{path} ends inside a record (truncated at byte {size})')
                f.seek(position)
                total += 1
    return total


_JOURNAL_RE = re.compile(r'^\.renames-(?P<host>.+)-(?P<pid>\d+)(?P<partial>\.tmp)?$')


def write_journal(output_dir, entry):
    """Writes this process's journal of renames, complete or not at all; returns its path.

    Args:
        entry: {'renames': [[temporary name, shard name], ...], 'splits': {split: [shard
            names]}}, names relative to `output_dir`.
    """
    path = os.path.join(output_dir, f'.renames-{socket.gethostname()}-{os.getpid()}')
    try:
        with open(path + '.tmp', 'w') as f:
            json.dump(entry, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + '.tmp', path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + '.tmp')
        raise
    return path


def apply_journal(output_dir, path):
    """Renames each temporary of the journal at `path` to its shard name, removes the shards of
    its splits that another shard count left, then the journal. Any step may have been done
    already (by the writer before it died, or by another process finishing the same journal)."""
    try:
        with open(path) as f:
            entry = json.load(f)
    except FileNotFoundError:
        return None  # finished by another process
    for temp, name in entry['renames']:
        with contextlib.suppress(FileNotFoundError):
            os.replace(os.path.join(output_dir, temp), os.path.join(output_dir, name))
    for split_name, split_names in entry['splits'].items():
        # A former conversion of this split with another shard count would make the set
        # ambiguous.
        stale_re = re.compile(re.escape(split_name) + r'-\d{5}-of-\d{5}\.tfrecord$')
        for name in sorted(os.listdir(output_dir)):
            if stale_re.match(name) and name not in split_names:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(output_dir, name))
                    logger.info('removed stale shard %s', os.path.join(output_dir, name))
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
    return sorted(entry['splits'])


def finish_interrupted_renames(output_dir, log=logger.warning):
    """Completes the renames of conversions into `output_dir` that were killed while renaming
    their shards (their journal is left, their process gone), and removes the journals of those
    killed while writing one (their temporaries are removed by the next conversion of the split).

    Only this host's journals are looked at: a live process elsewhere cannot be told from a dead
    one. Safe to call from several processes at once.

    Returns:
        The journals completed.
    Raises:
        OSError: the folder cannot be written (the renames cannot be completed).
    """
    completed = []
    for name in sorted(os.listdir(output_dir)):
        match = _JOURNAL_RE.match(name)
        if (not match or match['host'] != socket.gethostname()
                or alive(int(match['pid']))):
            continue
        path = os.path.join(output_dir, name)
        if match['partial']:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            continue
        splits = apply_journal(output_dir, path)
        if splits is not None:
            completed.append(path)
            log('completed the renames of a conversion that was killed while renaming its shards '
                '(%s): split(s) %s', path, ', '.join(splits))
    return completed
