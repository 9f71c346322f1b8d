"""The embedded demo dataset: small synthetic photos in the exact VOC 2012 layout.

Generated at run time from a seed (the repository ships no binaries):

    root/JPEGImages/2026_000001.jpg              JPEG photos
    root/SegmentationClass/2026_000001.png       palette PNGs with the VOC palette
    root/ImageSets/Segmentation/{train,val,trainval}.txt

Each image is a smooth noisy background with a few ellipses, rectangles and triangles, each of
one of five VOC classes and drawn with that class's colour and texture, so that a small network
can learn them. Labels hold the object classes, 0 for background, and a band of 255 (void) along
every class boundary, as VOC's do.
"""
import io
import os

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from libs.datasets import voc

ID_FORMAT = '2026_{:06d}'
BOUNDARY_WIDTH = 5  # window of the max/min filter: a band ~4 px wide, 2 on each side

# class name -> (base RGB colour, texture of yy, xx in [-1, 1]).
_STYLES = {
    'aeroplane': ((200, 205, 215), lambda yy, xx: np.sin(2 * np.pi * yy / 6)),
    'bus': ((230, 180, 30), lambda yy, xx: np.sin(2 * np.pi * xx / 8)),
    'cat': ((140, 90, 50), lambda yy, xx: ((yy // 5 + xx // 5) % 2) * 2.0 - 1),
    'person': ((220, 150, 130), lambda yy, xx: np.sin(2 * np.pi * (yy + xx) / 7)),
    'tvmonitor': ((40, 40, 60), lambda yy, xx: ((yy % 4 == 0) | (xx % 4 == 0)) * 2.0 - 1),
}
SAMPLE_CLASSES = tuple(_STYLES)


def _interpolation_matrix(size, cells):
    """[size, cells + 1] weights of linear interpolation from cells + 1 knots to size points."""
    position = np.linspace(0, cells, size)
    knot = np.minimum(position.astype(int), cells - 1)
    weights = np.zeros((size, cells + 1))
    weights[np.arange(size), knot] = 1 - (position - knot)
    weights[np.arange(size), knot + 1] = position - knot
    return weights


def _smooth_noise(rng, height, width, cells=5):
    """float [height, width, 3]: random values on a coarse grid, bilinearly interpolated."""
    grid = rng.normal(size=(cells + 1, cells + 1, 3))
    rows = np.tensordot(_interpolation_matrix(height, cells), grid, axes=1)  # [height, k, 3]
    return (rows.transpose(0, 2, 1) @ _interpolation_matrix(width, cells).T).transpose(0, 2, 1)


def _background(rng, height, width):
    start, end = rng.uniform(40, 200, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width]
    t = (np.cos(angle) * xx / width + np.sin(angle) * yy / height)
    t = ((t - t.min()) / max(np.ptp(t), 1e-6))[..., None]
    return start * (1 - t) + end * t + 25 * _smooth_noise(rng, height, width)


def _shape_mask(rng, height, width):
    """bool [height, width]: one ellipse, rectangle or triangle of 20-55% of the image size."""
    h = int(rng.uniform(0.2, 0.55) * height)
    w = int(rng.uniform(0.2, 0.55) * width)
    top = int(rng.integers(-h // 4, height - 3 * h // 4))
    left = int(rng.integers(-w // 4, width - 3 * w // 4))
    box = (left, top, left + w, top + h)
    canvas = Image.new('L', (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    kind = rng.integers(3)
    if kind == 0:
        draw.ellipse(box, fill=1)
    elif kind == 1:
        draw.rectangle(box, fill=1)
    else:
        apex = left + int(rng.integers(0, w + 1))
        draw.polygon([(left, top + h), (left + w, top + h), (apex, top)], fill=1)
    return np.asarray(canvas, bool)


def _render(rng, size_range):
    """One (uint8 [H, W, 3] image, uint8 [H, W] label, [class names of its objects])."""
    height, width = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
    image = _background(rng, height, width)
    label = np.zeros((height, width), np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    names = []
    for _ in range(rng.integers(1, 5)):
        mask = _shape_mask(rng, height, width)
        if mask.sum() < 100:  # mostly outside the frame: the boundary band would swallow it
            continue
        name = SAMPLE_CLASSES[rng.integers(len(SAMPLE_CLASSES))]
        base, texture = _STYLES[name]
        colour = np.asarray(base) + rng.uniform(-12, 12, size=3)
        shading = 15 * _smooth_noise(rng, height, width, cells=2)
        pixels = colour + 30 * texture(yy, xx)[..., None] + shading
        image[mask] = pixels[mask]
        label[mask] = voc.CLASS_NAMES.index(name)
        names.append(name)
    boundary = (ndimage.maximum_filter(label, BOUNDARY_WIDTH)
                != ndimage.minimum_filter(label, BOUNDARY_WIDTH))
    label[boundary] = voc.IGNORE_LABEL
    image += rng.normal(0, 5, size=image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), label, names


def _encode_jpeg(image, quality):
    buffer = io.BytesIO()
    Image.fromarray(image, 'RGB').save(buffer, format='JPEG', quality=quality)
    return buffer.getvalue()


def _encode_label(label):
    png = Image.fromarray(label, 'P')
    png.putpalette(voc.palette_flat())
    buffer = io.BytesIO()
    png.save(buffer, format='PNG')
    return buffer.getvalue()


def write_sample_dataset(root, num_train=300, num_val=40, size_range=(96, 160), seed=0):
    """Writes the demo dataset in the VOC 2012 layout under `root`.

    The same arguments give the same bytes (with the same Pillow and NumPy).

    Args:
        root: folder that plays the role of VOCdevkit/VOC2012; created if needed.
        num_train: images in train.txt.
        num_val: images in val.txt (trainval.txt lists both).
        size_range: (min, max) pixels of each image's height and width, drawn per image.
        seed: int.

    Returns:
        dict with 'num_train', 'num_val', 'num_trainval' and 'objects' ({class name: count}).
    """
    for folder in (voc.IMAGE_DIR, voc.LABEL_DIR, voc.SPLIT_DIR):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
    ids = [ID_FORMAT.format(k) for k in range(1, num_train + num_val + 1)]
    objects = dict.fromkeys(SAMPLE_CLASSES, 0)
    for k, image_id in enumerate(ids):
        rng = np.random.default_rng([seed, k])  # per image: any one can be regenerated alone
        image, label, names = _render(rng, size_range)
        for name in names:
            objects[name] += 1
        with open(os.path.join(root, voc.IMAGE_DIR, f'{image_id}.jpg'), 'wb') as f:
            f.write(_encode_jpeg(image, int(rng.integers(75, 96))))
        with open(os.path.join(root, voc.LABEL_DIR, f'{image_id}.png'), 'wb') as f:
            f.write(_encode_label(label))
    splits = {'train': ids[:num_train], 'val': ids[num_train:], 'trainval': ids}
    for split, split_ids in splits.items():
        with open(os.path.join(root, voc.SPLIT_DIR, f'{split}.txt'), 'w') as f:
            f.writelines(f'{i}\n' for i in split_ids)
    return {'num_train': num_train, 'num_val': num_val, 'num_trainval': len(ids),
            'objects': objects}
