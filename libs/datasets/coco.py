"""MS-COCO instances (JSON + images folder) -> VOC-class TFRecords, for pretraining on COCO.

DeepLabV3 (Chen et al. 2017, "Pretrained on COCO") pretrains on the COCO images that hold the
20 PASCAL VOC classes, with every other COCO class treated as background, then fine-tunes on VOC.

How a label is drawn (`draw_label`):
- categories are matched to VOC classes by their NAME in the JSON (`COCO_TO_VOC`), never by id;
  every other category is background (0);
- annotations are drawn in JSON order onto a background canvas, each over what is already there,
  so where instances overlap the later-drawn one wins; this holds for every annotation, so a
  later non-VOC instance (drawn as 0) covers an earlier VOC one;
- crowd regions (`iscrowd` 1) are drawn as 255 (ignored by loss and metric), whatever their
  category: a crowd mask outlines a group loosely, so its pixels are not reliable labels.

An image is kept when at least `min_voc_pixels` pixels of its label hold a VOC class (1..20);
the paper keeps "images that have annotation regions larger than 1000 pixels", hence the
default of 1000.

Records follow `tfrecord`'s schema (the original image bytes, the label as a greyscale PNG) and
are written by `shards.write_shards`, so train.py reads them like any VOC split. Validation
fully decodes every image and every kept image's annotations first; a bad entry refuses the
whole run before anything is written (or, with `skip_invalid`, is left out).
"""
import collections
import contextlib
import dataclasses
import io
import json
import logging
import os

import numpy as np
from pycocotools import coco as coco_api
from pycocotools import mask as mask_api
from tqdm import tqdm

from libs.datasets import conversion, description, label_files, voc
from libs.datasets.shards import default_num_shards, worker_map, write_shards
from libs.utils import messages

logger = logging.getLogger(__name__)

# COCO category name -> VOC class name, for the 20 VOC classes (COCO 2014/2017 names).
COCO_TO_VOC = {
    'airplane': 'aeroplane', 'bicycle': 'bicycle', 'bird': 'bird', 'boat': 'boat',
    'bottle': 'bottle', 'bus': 'bus', 'car': 'car', 'cat': 'cat', 'chair': 'chair',
    'cow': 'cow', 'dining table': 'diningtable', 'dog': 'dog', 'horse': 'horse',
    'motorcycle': 'motorbike', 'person': 'person', 'potted plant': 'pottedplant',
    'sheep': 'sheep', 'couch': 'sofa', 'train': 'train', 'tv': 'tvmonitor',
}
DEFAULT_MIN_VOC_PIXELS = 1000


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One COCO image and its annotations, as plain data for worker processes.

    `shapes` holds (label value, segmentation, annotation id) in JSON order; the value is the VOC
    class index, 0 for other categories, or 255 for crowd regions.
    """
    image_id: str
    image_path: str
    height: int
    width: int
    shapes: tuple
    annotation_file: str


@dataclasses.dataclass(frozen=True)
class _Checked:
    entry: _Entry
    image_format: str
    class_pixels: tuple  # labelled pixels per VOC class
    problems: tuple

    @property
    def voc_pixels(self):
        """Pixels of the 20 VOC object classes (background and crowd not counted)."""
        return sum(self.class_pixels[1:])


@dataclasses.dataclass
class CocoConversionResult(conversion.ConversionResult):
    """`ConversionResult` plus the ids of valid images dropped for too few VOC pixels."""
    dropped: list = dataclasses.field(default_factory=list)


def voc_class_map(categories):
    """{COCO category id: VOC class index} of the categories named in `COCO_TO_VOC`.

    Args:
        categories: the JSON's 'categories' list of {'id', 'name', ...}.

    Returns:
        (the map, sorted VOC class names that no category provides).
    """
    index = {name: i for i, name in enumerate(voc.CLASS_NAMES)}
    mapping = {c['id']: index[COCO_TO_VOC[c['name']]] for c in categories
               if c.get('name') in COCO_TO_VOC}
    found = {voc.CLASS_NAMES[i] for i in mapping.values()}
    return mapping, sorted(set(COCO_TO_VOC.values()) - found)


def _mask(segmentation, height, width):
    """uint8 [height, width] 0/1 mask of a polygon list, an uncompressed or a compressed RLE."""
    if isinstance(segmentation, list):
        rle = mask_api.merge(mask_api.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get('counts'), list):
        rle = mask_api.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict):
        rle = segmentation
    else:
        raise ValueError(f'segmentation is a {type(segmentation).__name__}, not polygons or RLE')
    mask = mask_api.decode(rle)
    if mask.shape != (height, width):
        raise ValueError(f'mask is {mask.shape[1]}x{mask.shape[0]}, the image {width}x{height}')
    return mask


def draw_label(shapes, height, width):
    """Draws annotations in order onto a background label; later ones cover earlier ones.

    Args:
        shapes: (label value, COCO segmentation, annotation id) triples, in drawing order.
        height, width: the image size.

    Returns:
        uint8 [height, width] class indices, 255 on crowd regions.

    Raises:
        label_files.EntryError: naming the annotation whose segmentation cannot be decoded.
    """
    label = np.zeros((height, width), np.uint8)
    for value, segmentation, ann_id in shapes:
        try:
            mask = _mask(segmentation, height, width)
        except Exception as e:  # pycocotools raises bare Exceptions, TypeErrors, ...
            raise label_files.EntryError(
                f'annotation {ann_id}: cannot decode its segmentation: {e}') from None
        label[mask.astype(bool)] = value
    return label


def _check(entry):
    """Validates one image and its annotations -> _Checked (run in worker processes)."""
    problems, fmt, class_pixels = [], None, (0,) * voc.NUM_CLASSES
    if not os.path.isfile(entry.image_path):
        problems.append(conversion.Problem(entry.image_id, entry.image_path, 'missing image'))
    else:
        try:
            fmt, (width, height) = label_files.read_image(entry.image_path)
        except label_files.EntryError as e:
            problems.append(conversion.Problem(entry.image_id, entry.image_path, str(e)))
        else:
            if (width, height) != (entry.width, entry.height):
                problems.append(conversion.Problem(
                    entry.image_id, entry.image_path,
                    f'image is {width}x{height}, but {entry.annotation_file} says '
                    f'{entry.width}x{entry.height}'))
    if not problems:
        try:
            class_pixels = label_files.class_pixel_counts(
                draw_label(entry.shapes, entry.height, entry.width), voc.NUM_CLASSES)
        except label_files.EntryError as e:
            problems.append(conversion.Problem(entry.image_id, entry.annotation_file, str(e)))
    return _Checked(entry, fmt, class_pixels, tuple(problems))


def _encode(checked):
    """_Checked -> the arguments of `tfrecord.make_example` (run in worker processes)."""
    entry = checked.entry
    with open(entry.image_path, 'rb') as f:
        image_bytes = f.read()
    label = draw_label(entry.shapes, entry.height, entry.width)
    return (image_bytes, checked.image_format, entry.image_id, entry.height, entry.width,
            label_files.encode_label(label))


def load_annotations(annotation_file):
    """Reads a COCO instances JSON into a pycocotools `COCO` index.

    Raises:
        FileNotFoundError: the file is missing.
        conversion.ConversionError: naming the file, when it is not JSON or not an instances
            file (no 'images', 'annotations' or 'categories' list).
    """
    if not os.path.isfile(annotation_file):
        raise FileNotFoundError(f'COCO annotation file not found: {annotation_file}')
    try:
        with open(annotation_file) as f:
            dataset = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise conversion.ConversionError(f'{annotation_file}: not a JSON file: {e}') from None
    missing = [key for key in ('images', 'annotations', 'categories')
               if not isinstance(dataset, dict) or not isinstance(dataset.get(key), list)]
    if missing:
        raise conversion.ConversionError(
            f'{annotation_file}: not a COCO instances file (no {", ".join(missing)} list); '
            'expected e.g. annotations/instances_train2017.json')
    index = coco_api.COCO()
    index.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        index.createIndex()
    return index


def _entries(index, image_dir, annotation_file, class_map):
    """(entries in the JSON's image order, problems found in the JSON itself)."""
    categories = {c['id'] for c in index.dataset['categories']}
    entries, problems = [], []
    for image in index.dataset['images']:
        file_name = image.get('file_name')
        if not file_name or 'height' not in image or 'width' not in image:
            raise conversion.ConversionError(
                f'{annotation_file}: image {image.get("id")!r} lacks file_name, height or width')
        image_id = os.path.splitext(os.path.basename(file_name))[0]
        shapes, unknown = [], []
        for ann in index.imgToAnns.get(image.get('id'), []):
            if ann.get('category_id') not in categories:
                unknown.append(ann.get('id'))
                continue
            value = voc.IGNORE_LABEL if ann.get('iscrowd') else class_map.get(
                ann['category_id'], 0)
            shapes.append((value, ann.get('segmentation'), ann.get('id')))
        if unknown:
            problems.append(conversion.Problem(
                image_id, annotation_file,
                f'annotations {unknown[:messages.MAX_LISTED]} name a category_id not in '
                'categories'))
        entries.append(_Entry(image_id, os.path.join(image_dir, file_name), int(image['height']),
                              int(image['width']), tuple(shapes), annotation_file))
    return entries, problems


def convert_coco(annotation_file, image_dir, split_name, output_dir,
                 min_voc_pixels=DEFAULT_MIN_VOC_PIXELS, num_shards=None, num_workers=None,
                 skip_invalid=False, progress=True):
    """Converts COCO instances to VOC-class `{split_name}-%05d-of-%05d.tfrecord` shards.

    Args:
        annotation_file: a COCO instances JSON, e.g. annotations/instances_train2017.json.
        image_dir: the folder its `file_name`s are relative to, e.g. train2017/.
        split_name: names the output shards, e.g. 'coco_train' (train.py --split-name).
        output_dir: where the shards go; created only when there is something to write.
        min_voc_pixels: keep an image only when at least this many label pixels hold a VOC
            class (1..20); 0 keeps every valid image.
        num_shards: default `default_num_shards(kept images)`.
        num_workers: validation/encoding processes; default os.cpu_count().
        skip_invalid: leave bad images out (listed in the result) instead of refusing.
        progress: show tqdm progress bars on stderr.

    Returns:
        CocoConversionResult.

    Raises:
        FileNotFoundError: the annotation file or the image folder is missing.
        conversion.ConversionError: the JSON is not a COCO instances file, names no VOC
            category, lists a file twice, some image is invalid (and not `skip_invalid`), or
            no image is left. Nothing is written.
    """
    if num_shards is not None and num_shards < 1:
        raise ValueError(f'num_shards must be at least 1, got {num_shards}')
    if min_voc_pixels < 0:
        raise ValueError(f'min_voc_pixels must be at least 0, got {min_voc_pixels}')
    index = load_annotations(annotation_file)
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f'image folder not found: {image_dir}')
    class_map, absent = voc_class_map(index.dataset['categories'])
    if not class_map:
        raise conversion.ConversionError(
            f'{annotation_file}: no category is named like a VOC class (e.g. "person", '
            '"airplane"); is it an instances_*.json?')
    warnings = []
    if absent:
        warnings.append(f'{annotation_file}: no category for the VOC classes {absent}; they '
                        'never appear in the labels')
    entries, problems = _entries(index, image_dir, annotation_file, class_map)
    if not entries:
        raise conversion.ConversionError(f'{annotation_file} lists no image')
    duplicates = sorted(i for i, n in collections.Counter(e.image_id for e in entries).items()
                        if n > 1)
    if duplicates:
        raise conversion.ConversionError(
            f'{annotation_file} lists image names more than once: '
            f'{duplicates[:messages.MAX_LISTED]}')
    for w in warnings:
        logger.warning('%s', w)

    description.check_can_record(voc.dataset(), output_dir)
    num_workers = num_workers or os.cpu_count() or 1
    with worker_map(num_workers, len(entries)) as mapper:
        checked = list(tqdm(mapper(_check, entries), total=len(entries), desc='validating',
                            unit='img', disable=not progress))
        problems += [p for c in checked for p in c.problems]
        if problems and not skip_invalid:
            raise conversion.ConversionError(conversion.describe_problems(
                f'refusing to convert {annotation_file}: {len({p.image_id for p in problems})} '
                f'of {len(entries)} images are invalid; nothing was written', problems), problems)
        bad_ids = {p.image_id for p in problems}
        valid = [c for c in checked if c.entry.image_id not in bad_ids]
        if problems:
            logger.warning('skipped %d invalid images:\n%s', len(bad_ids),
                           messages.listing(problems))
        kept = [c for c in valid if c.voc_pixels >= min_voc_pixels]
        dropped = [c.entry.image_id for c in valid if c.voc_pixels < min_voc_pixels]
        logger.info('%d of %d valid images hold at least %d VOC-class pixels; %d dropped',
                    len(kept), len(valid), min_voc_pixels, len(dropped))
        if not kept:
            raise conversion.ConversionError(
                f'no image of {annotation_file} is valid and holds at least {min_voc_pixels} '
                'VOC-class pixels; nothing was written')
        num_shards = min(num_shards or default_num_shards(len(kept)), len(kept))
        shards = write_shards(kept, _encode, output_dir, split_name, num_shards, mapper,
                              progress)
    description.record_split(voc.dataset(), output_dir, split_name, len(kept),
                             np.sum([c.class_pixels for c in kept], axis=0), shards)
    return CocoConversionResult(split_name, len(kept), shards, output_dir, problems, warnings,
                                dropped)
