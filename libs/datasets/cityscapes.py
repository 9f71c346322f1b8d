"""Cityscapes (fine annotations) -> records of the 19 train ids.

The layout of the download (https://www.cityscapes-dataset.com/, `leftImg8bit_trainvaltest.zip`
and `gtFine_trainvaltest.zip` unpacked into one folder):

    leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

The label images store the dataset's label ids (0..33). They become train ids through the
dataset's own label table, `cityscapesscripts.helpers.labels` (the `cityscapesscripts` package,
a dependency made for this rather than a copied table): the 19 classes with a train id keep it,
every other id (unlabeled, ego vehicle, parking, guard rail, ...) becomes the ignore label 255.
Class names and colours are the table's.

`test` has no usable labels (the benchmark withholds them): it is converted with labels of
255 only, marked unlabelled in `dataset.json`, and training and evaluation refuse it
(`description.check_split`); predict.py reads its images directly.
"""
import glob
import os

import numpy as np

from cityscapesscripts.helpers import labels as cityscapes_labels

from libs.datasets import conversion
from libs.datasets.description import DatasetDescription

IGNORE_LABEL = 255
IMAGE_DIR = 'leftImg8bit'
LABEL_DIR = 'gtFine'
IMAGE_SUFFIX = '_leftImg8bit.png'
LABEL_SUFFIX = '_gtFine_labelIds.png'
SPLIT_SIZES = {'train': 2975, 'val': 500, 'test': 1525}
UNLABELLED_SPLITS = ('test',)


def _train_labels():
    """The table's labels that have a train id, in train-id order."""
    labels = [label for label in cityscapes_labels.labels if 0 <= label.trainId < IGNORE_LABEL]
    return sorted(labels, key=lambda label: label.trainId)


def dataset():
    """The `DatasetDescription` of Cityscapes: the 19 train-id classes, names and colours from
    the official label table."""
    labels = _train_labels()
    return DatasetDescription('cityscapes', tuple(label.name for label in labels),
                              tuple(tuple(label.color) for label in labels), IGNORE_LABEL)


def label_ids_of_train_ids():
    """uint8 [256]: the table's label id of each train id (0, 'unlabeled', beyond them), the
    ids Cityscapes' evaluation script and benchmark server read in a prediction PNG."""
    table = np.zeros(256, np.uint8)
    for label in _train_labels():
        table[label.trainId] = label.id
    return table


def is_cityscapes(class_names):
    """Whether a run's class names are Cityscapes' 19 train-id classes, in train-id order."""
    return tuple(class_names or ()) == dataset().class_names


def label_mapping():
    """`conversion.LabelMapping` from label ids to train ids; ids without one -> 255."""
    lookup = [-1] * 256
    for label in cityscapes_labels.labels:
        if label.id >= 0:
            lookup[label.id] = label.trainId if 0 <= label.trainId < IGNORE_LABEL \
                else IGNORE_LABEL
    known = [label.id for label in cityscapes_labels.labels if label.id >= 0]
    return conversion.LabelMapping(tuple(lookup),
                                   f'the Cityscapes label ids {min(known)}..{max(known)}')


def entries(cityscapes_dir, split_name):
    """The split's `conversion.Entry`s, sorted by city then frame.

    Raises:
        FileNotFoundError: the split's image folder is missing or holds no `*_leftImg8bit.png`.
    """
    image_dir = os.path.join(cityscapes_dir, IMAGE_DIR, split_name)
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f'image folder not found: {image_dir} (is --cityscapes-dir the '
                                f'folder holding {IMAGE_DIR}/ and {LABEL_DIR}/?)')
    paths = sorted(glob.glob(os.path.join(glob.escape(image_dir), '*', '*' + IMAGE_SUFFIX)))
    if not paths:
        raise FileNotFoundError(f'no <city>/*{IMAGE_SUFFIX} in {image_dir}')
    result = []
    for path in paths:
        image_id = os.path.basename(path)[:-len(IMAGE_SUFFIX)]
        city = os.path.basename(os.path.dirname(path))
        result.append(conversion.Entry(image_id, path, os.path.join(
            cityscapes_dir, LABEL_DIR, split_name, city, image_id + LABEL_SUFFIX)))
    return result


def convert_split(cityscapes_dir, split_name, output_dir, num_shards=None, num_workers=None,
                  skip_invalid=False, progress=True):
    """Validates a Cityscapes split and writes it as `{split}-%05d-of-%05d.tfrecord` shards.

    Args:
        cityscapes_dir: the folder holding leftImg8bit/ and gtFine/.
        split_name: train, val or test (test: unlabelled, see the module docstring).
        output_dir, num_shards, num_workers, skip_invalid, progress: as
            `conversion.convert_entries`.

    Returns:
        conversion.ConversionResult.

    Raises:
        ValueError: an unknown split name.
        FileNotFoundError: the split's image folder is missing or empty.
        conversion.ConversionError: some entry is invalid (and not `skip_invalid`), or none is
            valid. Nothing is written.
    """
    if split_name not in SPLIT_SIZES:
        raise ValueError(f'unknown Cityscapes split {split_name!r}; expected one of '
                         f'{", ".join(SPLIT_SIZES)}')
    labelled = split_name not in UNLABELLED_SPLITS
    label_dir = os.path.join(cityscapes_dir, LABEL_DIR, split_name)
    likely_causes = {
        conversion.MISSING_LABEL: f'no label of this split is in {label_dir}: unpack '
                                  f'gtFine_trainvaltest.zip into {cityscapes_dir}'}
    return conversion.convert_entries(
        {split_name: entries(cityscapes_dir, split_name)}, dataset(),
        label_mapping() if labelled else None, output_dir, num_shards=num_shards,
        num_workers=num_workers, skip_invalid=skip_invalid, progress=progress,
        likely_causes=likely_causes)[split_name]
