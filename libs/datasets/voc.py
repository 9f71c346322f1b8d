"""PASCAL VOC 2012 conventions: class names, the colour palette, the folder layout, split lists.

Everything here must hold exactly (see DESIGN.md, "VOC conventions"):
- label PNGs are palette-indexed; index 255 marks boundaries and void and is ignored;
- the palette is the bit-interleaved VOC colormap, in which index 255 is (224, 224, 192).
"""
import os

import numpy as np

from libs.datasets.description import DatasetDescription

CLASS_NAMES = (
    'background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat',
    'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant',
    'sheep', 'sofa', 'train', 'tvmonitor',
)
NUM_CLASSES = len(CLASS_NAMES)
IGNORE_LABEL = 255

# Sizes of the standard splits; train_aug uses the SBD labels (SegmentationClassAug).
SPLIT_SIZES = {'train': 1464, 'val': 1449, 'trainval': 2913, 'train_aug': 10582}

# Folders inside VOCdevkit/VOC2012.
IMAGE_DIR = 'JPEGImages'
LABEL_DIR = 'SegmentationClass'
SPLIT_DIR = os.path.join('ImageSets', 'Segmentation')

# Lists the dataset itself does not ship (train_aug) or that the project pins, one id a line.
SHIPPED_SPLITS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'splits')


def color_map(n=256):
    """The VOC colormap: bits of the index interleaved into R, G and B, most significant first.

    Returns:
        uint8 array [n, 3]; row i is the colour of class index i (row 255 is (224, 224, 192)).
    """
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


PALETTE = color_map()


def dataset(num_classes=NUM_CLASSES):
    """The `DatasetDescription` of VOC, or of records in the VOC layout with another class count
    (named `voc_layout_<C>`, classes `class_<i>`, VOC's colours)."""
    names = (CLASS_NAMES if num_classes == NUM_CLASSES
             else tuple(f'class_{i}' for i in range(num_classes)))
    return DatasetDescription('voc2012' if num_classes == NUM_CLASSES else
                              f'voc_layout_{num_classes}', names,
                              tuple(tuple(int(v) for v in PALETTE[i]) for i in range(num_classes)),
                              IGNORE_LABEL)


def palette_flat():
    """The palette as the flat list of 768 ints that PIL's `Image.putpalette` takes."""
    return PALETTE.reshape(-1).tolist()


def read_split_ids(path):
    """Reads one image id a line (e.g. `2007_000032`), skipping blank lines.

    Raises:
        FileNotFoundError: naming the split file when it is missing.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'split list not found: {path}')
    with open(path) as f:
        return [line.strip().split()[0] for line in f if line.strip()]


def shipped_split_path(split_name):
    """Path of a split list shipped with the project (`train_aug`, `val`)."""
    return os.path.join(SHIPPED_SPLITS_DIR, f'{split_name}.txt')
