"""The VOC 2012 split conversion: VOC's folders and split lists (train_aug from SBD's
SegmentationClassAug and the shipped list) handed to `conversion.convert_entries`."""
import logging
import os

from libs.datasets import description, voc
from libs.datasets.conversion import (MISSING_IMAGE, MISSING_LABEL, VALUES_OUTSIDE,
                                      ConversionError, Entry, LabelMapping, convert_entries,
                                      refuse_repeated)
from libs.datasets.label_files import VOC_COLOURS

logger = logging.getLogger(__name__)

AUG_LABEL_DIR = 'SegmentationClassAug'


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
    """The `.png` label, else SBD's `.mat` when there is one (else the `.png`, missing)."""
    png = os.path.join(label_dir, f'{image_id}.png')
    mat = os.path.join(label_dir, f'{image_id}.mat')
    return mat if not os.path.isfile(png) and os.path.isfile(mat) else png


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
    refuse_repeated(ids, f'split list {split_file}')
    for folder, what in ((image_dir, 'image folder'), (label_dir, 'label folder')):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f'{what} not found: {folder}')
    warnings = _check_train_aug(ids, split_file) if split_name == 'train_aug' else []
    entries = [Entry(i, os.path.join(image_dir, f'{i}.jpg'), _label_path(label_dir, i))
               for i in ids]
    mapping = LabelMapping.identity(num_classes, colour_values=VOC_COLOURS,
                                    colours_name='VOC palette')
    likely_causes = {
        MISSING_LABEL: f'no label of this split is in {label_dir}: is it the right label folder '
                       '(--label-dir)?',
        MISSING_IMAGE: f'no image of this split is in {image_dir}: is --voc-dir the VOC2012 '
                       'folder?',
        VALUES_OUTSIDE: 'most labels hold classes beyond --num-classes: do the labels have more '
                        'classes than that?'}
    return convert_entries({split_name: entries}, dataset, mapping, output_dir,
                           num_shards=num_shards, num_workers=num_workers,
                           skip_invalid=skip_invalid, progress=progress, warnings=warnings,
                           likely_causes=likely_causes)[split_name]
