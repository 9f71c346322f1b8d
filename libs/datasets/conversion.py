"""VOC 2012 split (JPEGImages + class labels + split list) -> sharded TFRecords.

Two passes over the split:
1. validate every (image, label) pair by fully decoding both, in worker processes; any bad
   entry refuses the whole run before anything is written (or, with `skip_invalid`, is left out);
2. encode and write the shards under temporary names, renamed only once all are complete, so an
   error or Ctrl-C never leaves a partial shard set behind (`shards.write_shards`).

Images and labels are read and checked by `label_files`.
"""
import collections
import dataclasses
import logging
import os
import sys
import time

import numpy as np
from tqdm import tqdm

from libs.datasets import description, voc
from libs.datasets.label_files import (EntryError, class_pixel_counts, encode_label, read_image,
                                       read_label)
from libs.datasets.shards import default_num_shards, worker_map, write_shards
from libs.runs import lock
from libs.utils import messages

logger = logging.getLogger(__name__)

AUG_LABEL_DIR = 'SegmentationClassAug'


class ConversionError(ValueError):
    """The run was refused; nothing was written. `problems` lists every bad entry."""

    def __init__(self, message, problems=()):
        super().__init__(message)
        self.problems = list(problems)


@dataclasses.dataclass(frozen=True)
class Problem:
    image_id: str
    path: str
    reason: str

    def __str__(self):
        return f'{self.image_id}: {self.path}: {self.reason}'


@dataclasses.dataclass(frozen=True)
class _Checked:
    """What validation learnt about one entry."""
    image_id: str
    image_path: str
    label_path: str
    image_format: str
    height: int
    width: int
    problems: tuple
    warnings: tuple
    class_pixels: tuple = ()  # labelled pixels per class, for the dataset description


@dataclasses.dataclass
class ConversionResult:
    split: str
    num_images: int
    shards: list
    output_dir: str
    skipped: list = dataclasses.field(default_factory=list)
    warnings: list = dataclasses.field(default_factory=list)


def default_label_dir(voc_dir, split_name):
    """`SegmentationClassAug` for train_aug (most of its ids have no VOC label), else
    `SegmentationClass`."""
    return os.path.join(voc_dir, AUG_LABEL_DIR if split_name == 'train_aug' else voc.LABEL_DIR)


def default_split_file(voc_dir, split_name):
    """The shipped list for train_aug (VOC does not ship one), else VOC's own list."""
    if split_name == 'train_aug':
        return voc.shipped_split_path('train_aug')
    return os.path.join(voc_dir, voc.SPLIT_DIR, f'{split_name}.txt')


def _label_path(label_dir, image_id):
    """The `.png` label, else SBD's `.mat`, else None."""
    png = os.path.join(label_dir, f'{image_id}.png')
    mat = os.path.join(label_dir, f'{image_id}.mat')
    if os.path.isfile(png):
        return png
    return mat if os.path.isfile(mat) else None


def _check(entry):
    """Validates one (image_id, image_path, label_dir, num_classes) entry -> _Checked."""
    image_id, image_path, label_dir, num_classes = entry
    problems, warnings = [], []
    fmt, size, class_pixels = None, None, ()
    if not os.path.isfile(image_path):
        problems.append(Problem(image_id, image_path, 'missing image'))
    else:
        try:
            fmt, size = read_image(image_path)
        except EntryError as e:
            problems.append(Problem(image_id, image_path, str(e)))
    label_path = _label_path(label_dir, image_id)
    if label_path is None:
        problems.append(Problem(image_id, os.path.join(label_dir, f'{image_id}.png'),
                                'missing label'))
    else:
        try:
            label, warning = read_label(label_path)
        except EntryError as e:
            problems.append(Problem(image_id, label_path, str(e)))
        else:
            if warning:
                warnings.append(warning)
            label_size = (label.shape[1], label.shape[0])
            if size is not None and label_size != size:
                problems.append(Problem(
                    image_id, label_path, f'size mismatch: label {label_size[0]}x{label_size[1]}'
                    f', image {size[0]}x{size[1]} ({image_path})'))
            values = np.unique(label)
            bad = values[(values >= num_classes) & (values != voc.IGNORE_LABEL)].tolist()
            if bad:
                problems.append(Problem(
                    image_id, label_path, f'label values outside 0..{num_classes - 1} and '
                    f'{voc.IGNORE_LABEL}: {bad[:messages.MAX_LISTED]}'))
            else:
                class_pixels = class_pixel_counts(label, num_classes)
    width, height = size if size is not None else (0, 0)
    return _Checked(image_id, image_path, label_path, fmt, height, width, tuple(problems),
                    tuple(warnings), class_pixels)


def _encode(checked):
    """_Checked -> the arguments of `tfrecord.make_example`, for writing."""
    with open(checked.image_path, 'rb') as f:
        image_bytes = f.read()
    label, _ = read_label(checked.label_path)
    return (image_bytes, checked.image_format, checked.image_id, checked.height, checked.width,
            encode_label(label))


def _cause(reason):
    """The kind of a problem, e.g. 'missing label' or 'size mismatch' (its reason up to ':')."""
    return reason.split(':')[0]


def describe_problems(header, problems, likely_cause=None):
    """A refusal that fits a screen: the header, the likely cause, the count of each kind of
    problem, then at most `messages.MAX_LISTED` entries and the count of the rest.

    Args:
        header: the first line, e.g. "refusing to convert split 'val': ...".
        problems: `Problem`s.
        likely_cause: a line saying what probably went wrong, or None.
    """
    counts = collections.Counter(_cause(p.reason) for p in problems)
    lines = [header] + ([likely_cause] if likely_cause else [])
    lines.append('problems: ' + '; '.join(f'{cause} ({n})' for cause, n in counts.most_common()))
    return '\n'.join(lines + [messages.listing(problems)])


def _refusal(split_name, problems, num_entries, label_dir, image_dir):
    bad_ids = {p.image_id for p in problems}
    counts = collections.Counter(_cause(p.reason) for p in problems)
    likely_cause = None
    if counts['missing label'] == num_entries:
        likely_cause = (f'no label of this split is in {label_dir}: is it the right label folder '
                        '(--label-dir)?')
    elif counts['missing image'] == num_entries:
        likely_cause = (f'no image of this split is in {image_dir}: is --voc-dir the VOC2012 '
                        'folder?')
    elif counts['label values outside 0..'] * 2 > len(bad_ids):
        likely_cause = ('most labels hold classes beyond --num-classes: do the labels have more '
                        'classes than that?')
    return describe_problems(
        f'refusing to convert split {split_name!r}: {len(bad_ids)} of {num_entries} entries are '
        'invalid; nothing was written', problems, likely_cause)


def _check_train_aug(ids, split_file):
    """Warnings for a train_aug list that overlaps the val split; logs the counts."""
    val_ids = set(voc.read_split_ids(voc.shipped_split_path('val')))
    overlap = [i for i in ids if i in val_ids]
    logger.info('train_aug list %s: %d ids, %d of them in val', split_file, len(ids), len(overlap))
    if not overlap:
        return []
    return [f'train_aug list {split_file} holds {len(overlap)} ids of the val split '
            f'(e.g. {", ".join(overlap[:5])}); training on them inflates val mIoU']


def convert_split(voc_dir, split_name, output_dir, label_dir=None, split_file=None,
                  num_shards=None, num_workers=None, skip_invalid=False,
                  num_classes=voc.NUM_CLASSES, progress=True):
    """Validates a VOC split and writes it as `{split}-%05d-of-%05d.tfrecord` shards.

    Args:
        voc_dir: the VOCdevkit/VOC2012 folder (holds JPEGImages/).
        split_name: train, val, trainval, train_aug (or any name of a split list).
        output_dir: where the shards go; created only when there is something to write.
        label_dir: class labels; default `default_label_dir(voc_dir, split_name)`.
        split_file: one id a line; default `default_split_file(voc_dir, split_name)`.
        num_shards: default `default_num_shards(number of images)`; at most the image count.
        num_workers: validation/encoding processes; default os.cpu_count().
        skip_invalid: leave bad entries out (listed in the result) instead of refusing.
        num_classes: labels may hold 0..num_classes-1 and 255.
        progress: show tqdm progress bars on stderr.

    Returns:
        ConversionResult.

    Raises:
        FileNotFoundError: the split list or the image or label folder is missing.
        ConversionError: the split list is empty or has duplicates, some entry is invalid
            (and not `skip_invalid`), or no entry is valid. Nothing is written.
    """
    if num_shards is not None and num_shards < 1:
        raise ValueError(f'num_shards must be at least 1, got {num_shards}')
    if not 1 <= num_classes <= voc.IGNORE_LABEL:
        raise ValueError(f'num_classes must be in 1..{voc.IGNORE_LABEL}, got {num_classes}')
    dataset = voc.dataset(num_classes)
    description.check_can_record(dataset, output_dir)
    label_dir = label_dir or default_label_dir(voc_dir, split_name)
    split_file = split_file or default_split_file(voc_dir, split_name)
    image_dir = os.path.join(voc_dir, voc.IMAGE_DIR)
    ids = voc.read_split_ids(split_file)
    if not ids:
        raise ConversionError(f'split list {split_file} is empty')
    duplicates = sorted(i for i, n in collections.Counter(ids).items() if n > 1)
    if duplicates:
        raise ConversionError(f'split list {split_file} lists ids more than once: '
                              f'{duplicates[:messages.MAX_LISTED]}')
    for folder, what in ((image_dir, 'image folder'), (label_dir, 'label folder')):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f'{what} not found: {folder}')
    warnings = _check_train_aug(ids, split_file) if split_name == 'train_aug' else []

    num_workers = num_workers or os.cpu_count() or 1
    entries = [(i, os.path.join(image_dir, f'{i}.jpg'), label_dir, num_classes) for i in ids]
    with worker_map(num_workers, len(entries)) as mapper:
        checked = list(tqdm(mapper(_check, entries), total=len(entries), desc='validating',
                            unit='img', disable=not progress))
        for c in checked:
            warnings.extend(c.warnings)
        for w in warnings:
            logger.warning('%s', w)
        problems = [p for c in checked for p in c.problems]
        if problems and not skip_invalid:
            raise ConversionError(_refusal(split_name, problems, len(ids), label_dir, image_dir),
                                  problems)
        valid = [c for c in checked if not c.problems]
        if problems:
            logger.warning('skipped %d invalid entries:\n%s', len(ids) - len(valid),
                           messages.listing(problems))
        if not valid:
            raise ConversionError(f'no valid entry in split {split_name!r}; nothing was written',
                                  problems)
        num_shards = min(num_shards or default_num_shards(len(valid)), len(valid))
        shards = write_shards(valid, _encode, output_dir, split_name, num_shards, mapper,
                              progress)
    description.record_split(dataset, output_dir, split_name, len(valid),
                             np.sum([c.class_pixels for c in valid], axis=0), shards)
    return ConversionResult(split_name, len(valid), shards, output_dir, problems, warnings)


def run_for_script(convert, output_dir, skip_hint):
    """Runs a converter script's `convert()`, turning refusals into one message on stderr.

    Args:
        convert: a callable returning a `ConversionResult` (or the COCO converter's result).
        output_dir: the shards' folder, named when the run is interrupted.
        skip_hint: what `--skip-invalid` writes instead, e.g. 'the valid pairs only'.
    Returns:
        (result, seconds taken, exit status): the status is 0 with a result; 1 (refused input:
        a `ConversionError`, a missing file, a bad value, the split being written by another
        conversion) or 130 (interrupted) with None.
    """
    logging.basicConfig(level=logging.INFO, format='%(levelname)s: %(message)s')
    start = time.time()
    try:
        result = convert()
    except ConversionError as e:
        hint = f'\n(--skip-invalid writes {skip_hint})' if e.problems else ''
        print(f'error: {e}{hint}', file=sys.stderr)
        return None, time.time() - start, 1
    except (FileNotFoundError, ValueError, lock.FolderInUse) as e:
        print(f'error: {e}', file=sys.stderr)
        return None, time.time() - start, 1
    except KeyboardInterrupt:
        print(f'interrupted; no shard was written to {output_dir}', file=sys.stderr)
        return None, time.time() - start, 130
    return result, time.time() - start, 0
