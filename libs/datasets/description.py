"""The description of a dataset that travels with its records: `dataset.json` beside the shards.

What differs between datasets (class count, names, colours, ignore label, per-class pixel counts)
is written once, by the converter, and read from there by every script (DESIGN.md, "Datasets
beyond VOC"). Each split records its image count, its pixel count per class (for class weights)
and its shard files with their sizes, so that a reader notices shards replaced or truncated
after conversion.

    {
      "name": "voc2012", "ignore_label": 255,
      "class_names": ["background", ...], "palette": [[0, 0, 0], ...],
      "splits": {"val": {"num_images": 1449, "class_pixels": [...],
                         "shards": [["val-00000-of-00004.tfrecord", 18712345], ...]}}
    }
"""
import contextlib
import dataclasses
import fcntl
import json
import os
from typing import Dict, Tuple

from libs.utils.image_io import atomic_output

DESCRIPTION_FILE = 'dataset.json'


@dataclasses.dataclass(frozen=True)
class SplitInfo:
    """One converted split: images, labelled pixels per class (ignore label excluded), shards as
    (file name, size in bytes), and whether it has labels (Cityscapes test has none: converted
    for prediction and calibration only)."""
    num_images: int
    class_pixels: Tuple[int, ...]
    shards: Tuple[Tuple[str, int], ...]
    labelled: bool = True


@dataclasses.dataclass(frozen=True)
class DatasetDescription:
    """A dataset's classes and colours, and the splits converted so far.

    Args:
        name: e.g. 'voc2012', 'cityscapes', 'ade20k', or the user's.
        class_names: C names in class-index order.
        palette: C (r, g, b) colours, one per class, for palette PNGs and overlays.
        ignore_label: the label value of void pixels (not a class; 255 for every dataset here).
        splits: {split name: `SplitInfo`}.
    """
    name: str
    class_names: Tuple[str, ...]
    palette: Tuple[Tuple[int, int, int], ...]
    ignore_label: int = 255
    splits: Dict[str, SplitInfo] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not self.class_names:
            raise ValueError(f'dataset {self.name!r} has no classes')
        if len(self.palette) != len(self.class_names):
            raise ValueError(f'dataset {self.name!r}: {len(self.class_names)} classes but '
                             f'{len(self.palette)} palette colours')
        if 0 <= self.ignore_label < len(self.class_names):
            raise ValueError(f'dataset {self.name!r}: ignore label {self.ignore_label} is a class '
                             f'index ({len(self.class_names)} classes)')

    @property
    def num_classes(self):
        return len(self.class_names)

    def same_classes(self, other):
        """Whether `other` describes the same classes (name, names, colours, ignore label)."""
        return (self.name, self.class_names, self.palette, self.ignore_label) == (
            other.name, other.class_names, other.palette, other.ignore_label)

    def with_split(self, split_name, info):
        return dataclasses.replace(self, splits={**self.splits, split_name: info})

    def to_json_dict(self):
        return {'name': self.name, 'ignore_label': self.ignore_label,
                'class_names': list(self.class_names),
                'palette': [list(colour) for colour in self.palette],
                'splits': {name: {'num_images': info.num_images,
                                  'class_pixels': list(info.class_pixels),
                                  'shards': [list(shard) for shard in info.shards],
                                  **({} if info.labelled else {'labelled': False})}
                           for name, info in sorted(self.splits.items())}}

    @classmethod
    def from_json_dict(cls, values):
        splits = {name: SplitInfo(int(info['num_images']),
                                  tuple(int(v) for v in info['class_pixels']),
                                  tuple((str(f), int(size)) for f, size in info['shards']),
                                  bool(info.get('labelled', True)))
                  for name, info in values.get('splits', {}).items()}
        return cls(name=str(values['name']),
                   class_names=tuple(str(n) for n in values['class_names']),
                   palette=tuple(tuple(int(v) for v in colour) for colour in values['palette']),
                   ignore_label=int(values['ignore_label']), splits=splits)


def description_path(data_dir):
    return os.path.join(data_dir, DESCRIPTION_FILE)


def read_description(data_dir):
    """The `DatasetDescription` in `data_dir`, or None when there is none (records converted
    before descriptions existed).

    Raises:
        ValueError: naming the file, when it is not a valid description.
    """
    path = description_path(data_dir)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding='utf-8') as f:
            return DatasetDescription.from_json_dict(json.load(f))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f'{path} is not a valid dataset description ({e}); convert the records '
                         'again') from None


def check_split(description, data_dir, split_name, shard_paths):
    """Refuses shards that are not the ones the converter described (files replaced, truncated,
    added or removed since), and unlabelled splits: training and evaluation call this, and
    neither can use a split without labels.

    Args:
        description: the `DatasetDescription` of `data_dir`.
        shard_paths: the split's shard files found on disk (`tfrecord.list_shards`).

    Returns:
        The split's `SplitInfo`.

    Raises:
        ValueError: naming the split, the file and what differs, or saying the split has no
            labels.
    """
    path = description_path(data_dir)
    info = description.splits.get(split_name)
    if info is None:
        raise ValueError(f'{path} does not describe split {split_name!r} (it describes '
                         f'{", ".join(sorted(description.splits)) or "none"}), though its shards '
                         'are there: convert the split again')
    found = {os.path.basename(p): os.path.getsize(p) for p in shard_paths}
    described = dict(info.shards)
    for name in sorted(set(found) | set(described)):
        if found.get(name) != described.get(name):
            what = ('is missing' if name not in found else
                    'is not described' if name not in described else
                    f'has {found[name]} bytes, {described[name]} when converted')
            raise ValueError(f'split {split_name!r} in {data_dir}: {name} {what}; the shards '
                             'changed after conversion, convert the split again')
    if not info.labelled:
        labelled = [name for name, other in sorted(description.splits.items()) if other.labelled]
        raise ValueError(f'split {split_name!r} in {data_dir} has no labels (converted for '
                         'prediction only): training and evaluation need a labelled split '
                         f'({", ".join(labelled) or "none is converted"})')
    return info


@contextlib.contextmanager
def _locked(data_dir):
    """Holds an exclusive lock on the folder while its description is read and rewritten, so that
    converters of two splits running at once do not lose each other's entries. The lock is on
    the folder itself: no lock file is left behind."""
    fd = os.open(data_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def check_can_record(dataset, data_dir):
    """Refuses to convert `dataset` into a folder that describes another dataset (before any work).

    Raises:
        ValueError: naming both datasets.
    """
    existing = read_description(data_dir) if os.path.isdir(data_dir) else None
    if existing is not None and not existing.same_classes(dataset):
        raise ValueError(
            f'{data_dir} holds records of another dataset ({existing.name}, '
            f'{existing.num_classes} classes) than {dataset.name} ({dataset.num_classes} '
            'classes); use another --output-dir')


def record_split(dataset, data_dir, split_name, num_images, class_pixels, shard_paths,
                 labelled=True):
    """Adds (or replaces) a converted split in `data_dir`'s description, written atomically.

    Args:
        dataset: a `DatasetDescription` of the classes (its splits are ignored).
        split_name: the split converted.
        num_images: images written.
        class_pixels: C ints, labelled pixels per class.
        shard_paths: the shard files written.
        labelled: False for a split without labels (its records hold the ignore label only).

    Returns:
        The description now in `data_dir`.

    Raises:
        ValueError: the folder describes another dataset, or `class_pixels` has the wrong length.
    """
    if len(class_pixels) != dataset.num_classes:
        raise ValueError(f'{len(class_pixels)} pixel counts for {dataset.num_classes} classes')
    info = SplitInfo(int(num_images), tuple(int(v) for v in class_pixels),
                     tuple((os.path.basename(p), os.path.getsize(p)) for p in sorted(shard_paths)),
                     labelled)
    with _locked(data_dir):
        check_can_record(dataset, data_dir)
        existing = read_description(data_dir)
        base = existing if existing is not None else dataclasses.replace(dataset, splits={})
        description = base.with_split(split_name, info)
        with atomic_output(description_path(data_dir), 'w') as f:
            f.write(_format(description.to_json_dict()))
    return description


def _format(values):
    """JSON with one line per top-level key and per split: lists stay on one line, readable."""
    lines = [f'  {json.dumps(key)}: {json.dumps(value)}' for key, value in values.items()
             if key != 'splits']
    splits = [f'    {json.dumps(name)}: {json.dumps(info)}'
              for name, info in values['splits'].items()]
    lines.append('  "splits": {' + ('\n' + ',\n'.join(splits) + '\n  }' if splits else '}'))
    return '{\n' + ',\n'.join(lines) + '\n}\n'
