"""Class colours: rendering, overlays and palette-indexed label PNGs.

Label PNGs stay palette-indexed (DESIGN.md, "VOC conventions"): pixels are class indices, the
palette only paints them. They are read as indices and never converted to RGB. The colours are the
dataset's (`dataset.json`, recorded in the run's `config.json`); indices beyond its classes, the
ignore label 255 among them, keep the VOC colormap's colours, so VOC's output is VOC's palette.
"""

import numpy as np
from PIL import Image

from libs.datasets import voc
from libs.utils.image_io import atomic_output


def full_palette(class_colors=None):
    """The 256 colours of a palette PNG: `class_colors` first, the VOC colormap's after.

    Args:
        class_colors: C (r, g, b) colours by class index (C <= 255), or None for VOC's.

    Returns:
        uint8 array [256, 3].
    """
    if class_colors is None:
        return voc.PALETTE
    colors = np.asarray(class_colors, dtype=np.int64).reshape(-1, 3)
    if len(colors) > 255 or colors.min(initial=0) < 0 or colors.max(initial=0) > 255:
        raise ValueError(f'class colours must be at most 255 (r, g, b) triples of 0..255, got '
                         f'{len(colors)} in [{colors.min(initial=0)}, {colors.max(initial=0)}]')
    palette = voc.PALETTE.copy()
    palette[:len(colors)] = colors
    return palette


def colorize(label, class_colors=None):
    """Paints class indices with the class colours (`full_palette`).

    Args:
        label: integer array [H, W] with values in [0, 255] (255, the ignore label, paints
            as (224, 224, 192)).
        class_colors: C (r, g, b) colours by class index, or None for VOC's.

    Returns:
        uint8 array [H, W, 3].
    """
    label = _check_label(label)
    return full_palette(class_colors)[label]


def overlay(image, label, alpha=0.5, skip_background=True, class_colors=None):
    """Blends the colour mask of `label` over an RGB image.

    Args:
        image: uint8 array [H, W, 3].
        label: integer array [H, W] of class indices.
        alpha: weight of the colour mask in [0, 1].
        skip_background: leave background pixels (index 0) as the photo, so that only
            objects (and ignored boundaries) are tinted.
        class_colors: C (r, g, b) colours by class index, or None for VOC's.

    Returns:
        uint8 array [H, W, 3].
    """
    image = np.asarray(image)
    label = _check_label(label)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'image must be uint8 [H, W, 3], got {image.dtype} {image.shape}')
    if image.shape[:2] != label.shape:
        raise ValueError(f'image {image.shape[:2]} and label {label.shape} sizes differ')
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f'alpha must lie in [0, 1], got {alpha}')
    blended = ((1.0 - alpha) * image.astype(np.float32)
               + alpha * colorize(label, class_colors).astype(np.float32))
    blended = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    if skip_background:
        blended = np.where((label == 0)[..., None], image, blended)
    return blended


def save_palette_png(path, label, class_colors=None):
    """Writes class indices as a palette ('P' mode) PNG with the class colours, atomically.

    The PNG is written under a temporary name in the same folder and renamed, so that a reader
    never sees half a file, even if the writer is killed.

    Args:
        path: destination file name; its folder must exist.
        label: integer array [H, W] with values in [0, 255].
        class_colors: C (r, g, b) colours by class index, or None for VOC's (`full_palette`).
    """
    label = _check_label(label)
    # An 'L' image given a palette becomes 'P' with the same bytes as indices.
    image = Image.fromarray(label.astype(np.uint8))
    image.putpalette(full_palette(class_colors).reshape(-1).tolist())
    with atomic_output(path) as f:
        image.save(f, format='PNG')


def save_label_id_png(path, label, label_ids):
    """Writes class indices mapped to a dataset's own label ids as a greyscale ('L') PNG,
    atomically (as `save_palette_png`): what a benchmark such as Cityscapes' reads.

    Args:
        path: destination file name; its folder must exist.
        label: integer array [H, W] with values in [0, 255].
        label_ids: uint8 array [256], the label id of each class index.
    """
    label = _check_label(label)
    image = Image.fromarray(np.asarray(label_ids, np.uint8)[label], mode='L')
    with atomic_output(path) as f:
        image.save(f, format='PNG')


def read_label_png(path):
    """Reads the class indices of a label PNG, without converting the palette to RGB.

    Args:
        path: a palette-indexed ('P') or greyscale ('L') PNG.

    Returns:
        uint8 array [H, W].

    Raises:
        ValueError: for an RGB-coloured (or any other mode) label image, whose colours would
            otherwise be silently misread as indices.
    """
    with Image.open(path) as image:
        if image.mode not in ('P', 'L'):
            raise ValueError(
                f'{path}: label image has mode {image.mode!r}; labels must be palette-indexed '
                "('P') or greyscale ('L') class indices. An RGB-coloured label has to be mapped "
                'through the VOC palette to indices first.')
        return np.array(image, dtype=np.uint8)


def _check_label(label):
    """`label` as an integer array [H, W] with values in [0, 255]."""
    label = np.asarray(label)
    if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f'label must be an integer array [H, W], got {label.dtype} {label.shape}')
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f'label values must lie in [0, 255], got [{label.min()}, {label.max()}]')
    return label
