"""A split (images and label files) -> sharded TFRecords.

Every converter (VOC, Cityscapes, ADE20K, a folder of masks) hands `convert_entries` its
entries, (image id, image path, label path), and a `LabelMapping` from the values its label files
store to class indices. Two passes:
1. validate every entry by fully decoding the image and the label and mapping the label, in
   worker processes; any bad entry refuses the whole run before anything is written (or, with
   `skip_invalid`, is left out);
2. encode and write every split's shards under temporary names, renamed only once all of them
   are complete, so an error or Ctrl-C never leaves a partial shard set behind, nor some of the
   splits without the others (`shards.write_splits`), and record each split in the folder's
   `dataset.json`.

Images and labels are read and checked by `label_files`.
"""
import collections
import dataclasses
import functools
import logging
import os
from typing import Dict, Optional

import numpy as np
from tqdm import tqdm

from libs.datasets import description, voc
from libs.datasets.label_files import (EntryError, class_pixel_counts, encode_label,
                                       read_image, read_label)
from libs.datasets.shards import default_num_shards, worker_map, write_splits
from libs.utils import messages

logger = logging.getLogger(__name__)

MISSING_LABEL = 'missing label'
MISSING_IMAGE = 'missing image'
VALUES_OUTSIDE = 'label values outside'


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
class Entry:
    """One image and its label file (which may be missing: validation says so)."""
    image_id: str
    image_path: str
    label_path: str


@dataclasses.dataclass(frozen=True)
class LabelMapping:
    """How the values a dataset's label files store become class indices (or the ignore label).

    Attributes:
        lookup: 256 ints, stored value -> class index or ignore label; -1 where the value is
            refused.
        accepted: the values accepted, for messages, e.g. '0..20 and 255'.
        colour_values: {(r, g, b): stored value} that maps RGB labels back; None refuses them.
        colours_name: what those colours are, for messages, e.g. 'VOC palette'.
    """
    lookup: tuple
    accepted: str
    colour_values: Optional[Dict] = None
    colours_name: str = ''

    @classmethod
    def identity(cls, num_classes, ignore_label=voc.IGNORE_LABEL, colour_values=None,
                 colours_name=''):
        """Labels that store class indices 0..num_classes-1 and the ignore label."""
        lookup = [i if i < num_classes or i == ignore_label else -1 for i in range(256)]
        return cls(tuple(lookup), f'0..{num_classes - 1} and {ignore_label}', colour_values,
                   colours_name)

    def read(self, path):
        """(uint8 [H, W] class indices of a label file, a warning or None).

        Raises:
            EntryError: the file cannot be decoded, or holds values the mapping refuses (named).
        """
        stored, warning = read_label(path, self.colour_values, self.colours_name)
        lookup = np.asarray(self.lookup, np.int16)
        values = np.unique(stored)
        bad = values[lookup[values] < 0].tolist()
        if bad:
            raise EntryError(f'{VALUES_OUTSIDE} {self.accepted}: {bad[:messages.MAX_LISTED]}')
        return lookup.astype(np.uint8)[stored], warning


@dataclasses.dataclass(frozen=True)
class _Checked:
    """What validation learnt about one entry."""
    entry: Entry
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


def _check(entry, mapping, num_classes):
    """Validates one `Entry` -> _Checked (run in worker processes). `mapping` None: the split
    is unlabelled and its label files are not read."""
    problems, warnings = [], []
    fmt, size, class_pixels = None, None, (0,) * num_classes
    if not os.path.isfile(entry.image_path):
        problems.append(Problem(entry.image_id, entry.image_path, MISSING_IMAGE))
    else:
        try:
            fmt, size = read_image(entry.image_path)
        except EntryError as e:
            problems.append(Problem(entry.image_id, entry.image_path, str(e)))
    if mapping is not None and not os.path.isfile(entry.label_path):
        problems.append(Problem(entry.image_id, entry.label_path, MISSING_LABEL))
    elif mapping is not None:
        try:
            label, warning = mapping.read(entry.label_path)
        except EntryError as e:
            problems.append(Problem(entry.image_id, entry.label_path, str(e)))
        else:
            if warning:
                warnings.append(warning)
            label_size = (label.shape[1], label.shape[0])
            if size is not None and label_size != size:
                problems.append(Problem(
                    entry.image_id, entry.label_path,
                    f'size mismatch: label {label_size[0]}x{label_size[1]}, image '
                    f'{size[0]}x{size[1]} ({entry.image_path})'))
            class_pixels = class_pixel_counts(label, num_classes)
    width, height = size if size is not None else (0, 0)
    return _Checked(entry, fmt, height, width, tuple(problems), tuple(warnings), class_pixels)


def _encode(checked, mapping):
    """_Checked -> the arguments of `tfrecord.make_example`, for writing. An unlabelled entry
    (`mapping` None) gets a label of the ignore label only, as the schema needs one."""
    with open(checked.entry.image_path, 'rb') as f:
        image_bytes = f.read()
    if mapping is None:
        label = np.full((checked.height, checked.width), voc.IGNORE_LABEL, np.uint8)
    else:
        label, _ = mapping.read(checked.entry.label_path)
    return (image_bytes, checked.image_format, checked.entry.image_id, checked.height,
            checked.width, encode_label(label))


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


def _refusal(split_names, problems, num_entries, likely_causes):
    bad_ids = {p.image_id for p in problems}
    counts = collections.Counter(_cause(p.reason) for p in problems)
    likely_cause = None
    if counts[MISSING_LABEL] == num_entries:
        likely_cause = likely_causes.get(MISSING_LABEL)
    elif counts[MISSING_IMAGE] == num_entries:
        likely_cause = likely_causes.get(MISSING_IMAGE)
    elif sum(n for cause, n in counts.items() if cause.startswith(VALUES_OUTSIDE)) * 2 \
            > len(bad_ids):
        likely_cause = likely_causes.get(VALUES_OUTSIDE)
    what = (f'split {split_names[0]!r}' if len(split_names) == 1 else
            'splits ' + ', '.join(repr(name) for name in split_names))
    return describe_problems(
        f'refusing to convert {what}: {len(bad_ids)} of {num_entries} entries are invalid; '
        'nothing was written', problems, likely_cause)


def convert_entries(splits, dataset, mapping, output_dir, num_shards=None, num_workers=None,
                    skip_invalid=False, progress=True, warnings=(), likely_causes=None):
    """Validates the entries of one or more splits, then writes each as
    `{split}-%05d-of-%05d.tfrecord` shards and records it in `dataset.json`.

    Every split is validated before any is written, so a bad entry anywhere refuses them all,
    and the splits' shards appear together or not at all (`shards.write_splits`).

    Args:
        splits: {split name: [`Entry`]}, each list without repeated image ids.
        dataset: the `DatasetDescription` of the classes.
        mapping: the `LabelMapping` of the label files, or None for unlabelled splits (labels
            not read; records get labels of the ignore label only, and `dataset.json` marks the
            splits unlabelled).
        output_dir: where the shards go; created only when there is something to write.
        num_shards: per split; default `default_num_shards(its images)`; at most its images.
        num_workers: validation/encoding processes; default os.cpu_count().
        skip_invalid: leave bad entries out (listed in the results) instead of refusing.
        progress: show tqdm progress bars on stderr.
        warnings: warnings found by the caller, logged and returned with the rest.
        likely_causes: {MISSING_LABEL | MISSING_IMAGE | VALUES_OUTSIDE: a line saying what
            probably went wrong}, shown when every entry misses its label (its image) or when
            most bad entries hold values outside the mapping.

    Returns:
        {split name: `ConversionResult`}.

    Raises:
        ConversionError: some entry is invalid (and not `skip_invalid`), or a split has no
            valid entry. Nothing is written.
    """
    if num_shards is not None and num_shards < 1:
        raise ValueError(f'num_shards must be at least 1, got {num_shards}')
    description.check_can_record(dataset, output_dir)
    entries = [entry for split_entries in splits.values() for entry in split_entries]
    warnings = list(warnings)
    num_workers = num_workers or os.cpu_count() or 1
    results = {}
    with worker_map(num_workers, len(entries)) as mapper:
        checked = list(tqdm(
            mapper(functools.partial(_check, mapping=mapping, num_classes=dataset.num_classes),
                   entries), total=len(entries), desc='validating', unit='img',
            disable=not progress))
        entry_warnings = [w for c in checked for w in c.warnings]
        if entry_warnings:  # one line, however many label files were saved as RGB
            more = len(entry_warnings) - 1
            warnings.append(entry_warnings[0] + (f' (and {more} more label files like it)'
                                                 if more else ''))
        for w in warnings:
            logger.warning('%s', w)
        problems = [p for c in checked for p in c.problems]
        if problems and not skip_invalid:
            raise ConversionError(_refusal(list(splits), problems, len(entries),
                                           likely_causes or {}), problems)
        if problems:
            logger.warning('skipped %d invalid entries:\n%s',
                           sum(1 for c in checked if c.problems), messages.listing(problems))
        valid = {}
        start = 0
        for split_name, split_entries in splits.items():
            split_checked = checked[start:start + len(split_entries)]
            start += len(split_entries)
            valid[split_name] = [c for c in split_checked if not c.problems]
            if not valid[split_name]:
                raise ConversionError(f'no valid entry in split {split_name!r}; nothing was '
                                      'written', problems)
        written = write_splits(
            {split_name: (split_valid, min(num_shards or default_num_shards(len(split_valid)),
                                           len(split_valid)))
             for split_name, split_valid in valid.items()},
            functools.partial(_encode, mapping=mapping), output_dir, mapper, progress)
        for split_name, split_valid in valid.items():
            description.record_split(dataset, output_dir, split_name, len(split_valid),
                                     np.sum([c.class_pixels for c in split_valid], axis=0),
                                     written[split_name], labelled=mapping is not None)
            split_ids = {e.image_id for e in splits[split_name]}
            results[split_name] = ConversionResult(
                split_name, len(split_valid), written[split_name], output_dir,
                [p for p in problems if p.image_id in split_ids], warnings)
    return results


def refuse_repeated(ids, where):
    """Refuses a list of image ids in which some id is repeated.

    Raises:
        ConversionError: naming `where` (e.g. 'split list train.txt') and the repeated ids.
    """
    repeated = sorted(i for i, n in collections.Counter(ids).items() if n > 1)
    if repeated:
        raise ConversionError(f'{where} lists ids more than once: '
                              f'{repeated[:messages.MAX_LISTED]}')
