"""The embedded demo dataset: small synthetic photos, in the layout of VOC 2012, Cityscapes,
ADE20K or a plain folder, so that every converter runs without a download.

Generated at run time from a seed (the repository ships no binaries). The VOC layout (default):

    root/JPEGImages/2026_000001.jpg              JPEG photos
    root/SegmentationClass/2026_000001.png       palette PNGs with the VOC palette
    root/ImageSets/Segmentation/{train,val,trainval}.txt

The others hold the same photos and objects, labelled as that dataset stores labels (`LAYOUTS`):

    cityscapes  leftImg8bit/{train,val,test}/<city>/<city>_<k>_000019_leftImg8bit.png and
                gtFine/{train,val}/<city>/..._gtFine_labelIds.png: real label ids (road
                background, sky, bus, vegetation, person, and guard rail, unlabeled on the void
                band and ego vehicle on the bottom rows, which have no train id); test has
                images only, as many as val
    ade20k      images/{training,validation}/ADE_{train,val}_%08d.jpg and annotations/...png:
                1-based SceneParsing values, 0 ("other") on the void band
    folder      images/sample_%06d.jpg, masks/sample_%06d.png (class indices as palette PNGs,
                or RGB colours with `rgb_masks`), classes.txt (names and colours) and
                splits/{train,val}.txt

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
from libs.datasets.folder import IGNORE_COLOUR

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


def _encode(image, mode='RGB', image_format='JPEG', quality=None, palette=None):
    png = Image.fromarray(image, mode)
    if palette is not None:
        png.putpalette(palette)
    buffer = io.BytesIO()
    png.save(buffer, format=image_format, **({'quality': quality} if quality else {}))
    return buffer.getvalue()


def _write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(data)


def _lookup(pairs, default):
    """uint8 [256]: VOC index -> stored value, from {VOC class name or 255: value}."""
    table = np.full(256, default, np.uint8)
    for key, value in pairs.items():
        table[key if key == voc.IGNORE_LABEL else voc.CLASS_NAMES.index(key)] = value
    return table


FOLDER_CLASSES = ('background',) + SAMPLE_CLASSES
CITYSCAPES_CITIES = {'train': ('aachen', 'bochum'), 'val': ('frankfurt',), 'test': ('berlin',)}
# The sample's classes as Cityscapes names; 'guard rail' and the void band's 'unlabeled' have no
# train id, so the converter must make them 255.
CITYSCAPES_NAMES = {'background': 'road', 'aeroplane': 'sky', 'bus': 'bus',
                    'cat': 'vegetation', 'person': 'person', 'tvmonitor': 'guard rail',
                    voc.IGNORE_LABEL: 'unlabeled'}
CITYSCAPES_BOTTOM = ('ego vehicle', 3)  # label and rows at the bottom of every image
ADE20K_NAMES = {'background': 'wall', 'aeroplane': 'airplane', 'bus': 'bus', 'cat': 'animal',
                'person': 'person', 'tvmonitor': 'television receiver'}


def _voc_writer(root, rgb_masks):
    del rgb_masks  # VOC labels are palette PNGs

    def write(split, k, image, label, quality):
        image_id = ID_FORMAT.format(k + 1)
        _write(os.path.join(root, voc.IMAGE_DIR, f'{image_id}.jpg'),
               _encode(image, quality=quality))
        _write(os.path.join(root, voc.LABEL_DIR, f'{image_id}.png'),
               _encode(label, 'P', 'PNG', palette=voc.palette_flat()))
        return image_id
    return write


def _cityscapes_writer(root, rgb_masks):
    from cityscapesscripts.helpers.labels import name2label

    del rgb_masks  # labelIds images are greyscale
    table = _lookup({key: name2label[name].id for key, name in CITYSCAPES_NAMES.items()}, 0)
    bottom_id, bottom_rows = name2label[CITYSCAPES_BOTTOM[0]].id, CITYSCAPES_BOTTOM[1]

    def write(split, k, image, label, quality):
        del quality  # Cityscapes images are PNG
        cities = CITYSCAPES_CITIES[split]
        city = cities[k % len(cities)]
        image_id = f'{city}_{k:06d}_000019'
        _write(os.path.join(root, 'leftImg8bit', split, city, f'{image_id}_leftImg8bit.png'),
               _encode(image, image_format='PNG'))
        if split != 'test':
            ids = table[label]
            ids[-bottom_rows:] = bottom_id
            _write(os.path.join(root, 'gtFine', split, city, f'{image_id}_gtFine_labelIds.png'),
                   _encode(ids, 'L', 'PNG'))
        return image_id
    return write


def _ade20k_writer(root, rgb_masks):
    from libs.datasets import ade20k

    del rgb_masks  # annotations are greyscale
    table = _lookup({key: ade20k.CLASS_NAMES.index(name) + 1
                     for key, name in ADE20K_NAMES.items()} | {voc.IGNORE_LABEL: 0}, 0)

    def write(split, k, image, label, quality):
        image_id = f'ADE_{"train" if split == "training" else "val"}_{k + 1:08d}'
        _write(os.path.join(root, 'images', split, f'{image_id}.jpg'),
               _encode(image, quality=quality))
        _write(os.path.join(root, 'annotations', split, f'{image_id}.png'),
               _encode(table[label], 'L', 'PNG'))
        return image_id
    return write


def folder_colours():
    """The class colours of the folder layout's classes.txt: VOC's colours of those classes."""
    return tuple(tuple(int(v) for v in voc.PALETTE[voc.CLASS_NAMES.index(name)])
                 for name in FOLDER_CLASSES)


def _folder_writer(root, rgb_masks):
    table = _lookup({name: i for i, name in enumerate(FOLDER_CLASSES)}
                    | {voc.IGNORE_LABEL: voc.IGNORE_LABEL}, 0)
    colours = np.zeros((256, 3), np.uint8)
    colours[:len(FOLDER_CLASSES)] = folder_colours()
    colours[voc.IGNORE_LABEL] = IGNORE_COLOUR
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, 'classes.txt'), 'w') as f:
        f.writelines(f'{name} {",".join(map(str, colour))}\n'
                     for name, colour in zip(FOLDER_CLASSES, folder_colours()))

    def write(split, k, image, label, quality):
        stem = f'sample_{k + 1:06d}'
        _write(os.path.join(root, 'images', f'{stem}.jpg'), _encode(image, quality=quality))
        mask = table[label]
        _write(os.path.join(root, 'masks', f'{stem}.png'),
               _encode(colours[mask], 'RGB', 'PNG') if rgb_masks else
               _encode(mask, 'P', 'PNG', palette=colours.reshape(-1).tolist()))
        return stem
    return write


# layout -> (writer factory, split names: train, val, and an unlabelled one or None).
LAYOUTS = {'voc': (_voc_writer, ('train', 'val', None)),
           'cityscapes': (_cityscapes_writer, ('train', 'val', 'test')),
           'ade20k': (_ade20k_writer, ('training', 'validation', None)),
           'folder': (_folder_writer, ('train', 'val', None))}


def write_sample_dataset(root, num_train=300, num_val=40, size_range=(96, 160), seed=0,
                         layout='voc', rgb_masks=False):
    """Writes the demo dataset in a dataset's layout under `root` (see the module docstring).

    The same arguments give the same bytes (with the same Pillow and NumPy); the photos and
    objects are the same in every layout.

    Args:
        root: folder that plays the role of VOCdevkit/VOC2012 (the Cityscapes folder,
            ADEChallengeData2016, the user's folder); created if needed.
        num_train: images in the training split.
        num_val: images in the validation split (and in Cityscapes' unlabelled test split).
        size_range: (min, max) pixels of each image's height and width, drawn per image.
        seed: int.
        layout: one of `LAYOUTS`.
        rgb_masks: folder layout: masks as RGB colours of classes.txt instead of palette PNGs.

    Returns:
        dict with 'num_train', 'num_val', 'splits' ({split name: ids}), 'objects' ({class name:
        count}), and for VOC 'num_trainval'.
    """
    make_writer, (train, val, unlabelled) = LAYOUTS[layout]
    write = make_writer(root, rgb_masks)
    counts = {train: num_train, val: num_val, unlabelled: num_val if unlabelled else 0}
    objects = dict.fromkeys(SAMPLE_CLASSES, 0)
    splits, k = {}, 0
    for split, count in counts.items():
        for _ in range(count):
            rng = np.random.default_rng([seed, k])  # per image: any one can be regenerated alone
            image, label, names = _render(rng, size_range)
            quality = int(rng.integers(75, 96))
            if split != unlabelled:
                for name in names:
                    objects[name] += 1
            splits.setdefault(split, []).append(write(split, k, image, label, quality))
            k += 1
    summary = {'num_train': num_train, 'num_val': num_val, 'splits': splits, 'objects': objects}
    if layout == 'voc':
        splits['trainval'] = splits[train] + splits[val]
        os.makedirs(os.path.join(root, voc.SPLIT_DIR), exist_ok=True)
        summary['num_trainval'] = len(splits['trainval'])
    for split, ids in splits.items():
        if layout in ('voc', 'folder') and split != unlabelled:
            split_dir = os.path.join(root, voc.SPLIT_DIR if layout == 'voc' else 'splits')
            os.makedirs(split_dir, exist_ok=True)
            with open(os.path.join(split_dir, f'{split}.txt'), 'w') as f:
                f.writelines(f'{i}\n' for i in ids)
    return summary
