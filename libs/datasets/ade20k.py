"""ADE20K, the MIT Scene Parsing benchmark (SceneParsing, `ADEChallengeData2016`) -> records.

The layout of `ADEChallengeData2016.zip` (http://sceneparsing.csail.mit.edu/):

    images/{training,validation}/ADE_{train,val}_%08d.jpg
    annotations/{training,validation}/ADE_{train,val}_%08d.png   greyscale, 0..150

Annotations store 0 for "other" (pixels of none of the 150 classes) and k for class k (1-based).
Records store 0 as the ignore label 255 and k as k - 1, as the reference DeepLab and mmseg do.

Class names: the first synonym of each row's Name in the benchmark's `objectInfo150.csv`
(https://github.com/CSAILVision/sceneparsing, `objectInfo150.csv`), in row order. No package that
this project can depend on ships them (mmsegmentation and detectron2 projects carry their own
copies), so they are written here once. Colours: generated, not the devkit's table: class k
takes the VOC colour of its annotation value k + 1 (`voc.color_map`), so a palette PNG of a raw
annotation and the records' classes show the same colours.
"""
import os

from libs.datasets import conversion, voc
from libs.datasets.description import DatasetDescription

IGNORE_LABEL = 255
IMAGE_DIR = 'images'
LABEL_DIR = 'annotations'
SPLIT_SIZES = {'training': 20210, 'validation': 2000}

CLASS_NAMES = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane',
    'grass', 'cabinet', 'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant',
    'curtain', 'chair', 'car', 'water', 'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror',
    'rug', 'field', 'armchair', 'seat', 'fence', 'desk', 'rock', 'wardrobe', 'lamp', 'bathtub',
    'railing', 'cushion', 'base', 'box', 'column', 'signboard', 'chest of drawers', 'counter',
    'sand', 'sink', 'skyscraper', 'fireplace', 'refrigerator', 'grandstand', 'path', 'stairs',
    'runway', 'case', 'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge',
    'bookcase', 'blind', 'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench',
    'countertop', 'stove', 'palm', 'kitchen island', 'computer', 'swivel chair', 'boat', 'bar',
    'arcade machine', 'hovel', 'bus', 'towel', 'light', 'truck', 'tower', 'chandelier',
    'awning', 'streetlight', 'booth', 'television receiver', 'airplane', 'dirt track',
    'apparel', 'pole', 'land', 'bannister', 'escalator', 'ottoman', 'bottle', 'buffet',
    'poster', 'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy', 'washer',
    'plaything', 'swimming pool', 'stool', 'barrel', 'basket', 'waterfall', 'tent', 'bag',
    'minibike', 'cradle', 'oven', 'ball', 'food', 'step', 'tank', 'trade name', 'microwave',
    'pot', 'animal', 'bicycle', 'lake', 'dishwasher', 'screen', 'blanket', 'sculpture', 'hood',
    'sconce', 'vase', 'traffic light', 'tray', 'ashcan', 'fan', 'pier', 'crt screen', 'plate',
    'monitor', 'bulletin board', 'shower', 'radiator', 'glass', 'clock', 'flag',
)
NUM_CLASSES = len(CLASS_NAMES)


def dataset():
    """The `DatasetDescription` of ADE20K SceneParsing: 150 classes."""
    palette = voc.color_map()[1:NUM_CLASSES + 1]
    return DatasetDescription('ade20k', CLASS_NAMES,
                              tuple(tuple(int(v) for v in colour) for colour in palette),
                              IGNORE_LABEL)


def label_mapping():
    """`conversion.LabelMapping` of the annotations: 0 -> 255, k -> k - 1 for k in 1..150."""
    lookup = [IGNORE_LABEL] + list(range(NUM_CLASSES)) + [-1] * (255 - NUM_CLASSES)
    return conversion.LabelMapping(tuple(lookup), f'0..{NUM_CLASSES} (ADE20K SceneParsing)')


def entries(ade20k_dir, split_name):
    """The split's `conversion.Entry`s, sorted by name.

    Raises:
        FileNotFoundError: the split's image folder is missing or holds no .jpg.
    """
    image_dir = os.path.join(ade20k_dir, IMAGE_DIR, split_name)
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f'image folder not found: {image_dir} (is --ade20k-dir the '
                                'ADEChallengeData2016 folder?)')
    names = sorted(n for n in os.listdir(image_dir) if n.lower().endswith('.jpg'))
    if not names:
        raise FileNotFoundError(f'no .jpg image in {image_dir}')
    label_dir = os.path.join(ade20k_dir, LABEL_DIR, split_name)
    return [conversion.Entry(os.path.splitext(n)[0], os.path.join(image_dir, n),
                             os.path.join(label_dir, os.path.splitext(n)[0] + '.png'))
            for n in names]


def convert_split(ade20k_dir, split_name, output_dir, num_shards=None, num_workers=None,
                  skip_invalid=False, progress=True):
    """Validates an ADE20K split and writes it as `{split}-%05d-of-%05d.tfrecord` shards.

    Args:
        ade20k_dir: the ADEChallengeData2016 folder.
        split_name: training or validation.
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
        raise ValueError(f'unknown ADE20K split {split_name!r}; expected one of '
                         f'{", ".join(SPLIT_SIZES)}')
    label_dir = os.path.join(ade20k_dir, LABEL_DIR, split_name)
    likely_causes = {
        conversion.MISSING_LABEL: f'no annotation of this split is in {label_dir}: is '
                                  '--ade20k-dir the ADEChallengeData2016 folder?',
        conversion.VALUES_OUTSIDE: 'most annotations hold values above 150: are they the '
                                   'SceneParsing annotations (not the full ADE20K index)?'}
    return conversion.convert_entries(
        {split_name: entries(ade20k_dir, split_name)}, dataset(), label_mapping(), output_dir,
        num_shards=num_shards, num_workers=num_workers, skip_invalid=skip_invalid,
        progress=progress, likely_causes=likely_causes)[split_name]
