"""Any folder of images and masks -> records: the user's own dataset.

    images/<stem>.jpg|.jpeg|.png     the photos
    masks/<stem>.png                 class indices: a palette (P) or greyscale (L) PNG,
                                     255 = ignore; or RGB colours of the class list (mapped
                                     back, with a warning)
    classes.txt                      one class a line, in index order: `name`, `name r,g,b` or
                                     `name #rrggbb` (colours for all classes or for none)

Images and masks are matched by file stem; an image without a mask or a mask without an image is
named and refused (or left out with `skip_invalid`). A mask value that is neither a class index
nor 255 is refused, naming the file and the value. Splits come from lists of stems (one file per
split, its name the split's) or from ratios over the sorted stems, shuffled with a seed; every
split is validated before any is written, and their shards appear together or not at all.
"""
import dataclasses
import logging
import os
import re

import numpy as np

from libs.datasets import conversion, voc
from libs.datasets.description import DatasetDescription
from libs.utils import messages

logger = logging.getLogger(__name__)

IGNORE_LABEL = 255
# An RGB mask marks ignored pixels with the colour VOC's palette gives 255.
IGNORE_COLOUR = tuple(int(v) for v in voc.PALETTE[IGNORE_LABEL])
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
MASK_EXTENSION = '.png'
_CLASS_LINE = re.compile(r'^(?P<name>.+?)(?:\s+(?P<colour>#[0-9a-fA-F]{6}|\d+,\d+,\d+))?$')


@dataclasses.dataclass
class FolderConversion:
    """{split name: `conversion.ConversionResult`} and the unmatched files left out."""
    splits: dict
    unmatched: list


def read_classes(path):
    """Reads a class list: one class a line, optionally followed by its colour.

    Returns:
        (names, colours): C names, and C (r, g, b) tuples, or None when the file gives none.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: naming the file and line of a bad colour, a repeated name or colour, colours
            on some lines only, or a class count outside 1..255.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'class list not found: {path}')
    names, colours = [], []
    with open(path, encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            match = _CLASS_LINE.match(line)
            name, colour = match['name'], match['colour']
            if colour is None:
                colours.append(None)
            elif colour.startswith('#'):
                colours.append(tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5)))
            else:
                colours.append(tuple(int(v) for v in colour.split(',')))
                if max(colours[-1]) > 255:
                    raise ValueError(f'{path}:{number}: colour {colour} has a value above 255')
            if name in names:
                raise ValueError(f'{path}:{number}: class {name!r} is listed twice')
            names.append(name)
    if not 1 <= len(names) <= IGNORE_LABEL:
        raise ValueError(f'{path} lists {len(names)} classes; 1..{IGNORE_LABEL} are possible '
                         f'({IGNORE_LABEL} is the ignore label)')
    given = [c for c in colours if c is not None]
    if not given:
        return tuple(names), None
    if len(given) != len(colours):
        missing = [name for name, c in zip(names, colours) if c is None]
        raise ValueError(f'{path} gives colours for some classes only (none for '
                         f'{missing[:messages.MAX_LISTED]}); give one for every class or none')
    for colour in set(given):
        holders = [name for name, c in zip(names, colours) if c == colour]
        if len(holders) > 1 or colour == IGNORE_COLOUR:
            raise ValueError(f'{path}: colour {colour} is given to {", ".join(holders)}'
                             + (' and is the ignore colour' if colour == IGNORE_COLOUR else ''))
    return tuple(names), tuple(colours)


def dataset(name, classes_file):
    """The `DatasetDescription` of a folder dataset: the class list's names and colours (VOC's
    palette when it gives none)."""
    names, colours = read_classes(classes_file)
    if colours is None:
        colours = tuple(tuple(int(v) for v in voc.PALETTE[i]) for i in range(len(names)))
    return DatasetDescription(name, names, colours, IGNORE_LABEL)


def label_mapping(description):
    """Masks store class indices; RGB masks are mapped back through the class colours."""
    colour_values = {colour: i for i, colour in enumerate(description.palette)}
    colour_values[IGNORE_COLOUR] = IGNORE_LABEL
    return conversion.LabelMapping.identity(description.num_classes, IGNORE_LABEL, colour_values,
                                            'class list')


def _files_by_stem(folder, extensions, what):
    """{stem: path} of the files of `folder` with those extensions.

    Raises:
        FileNotFoundError: the folder is missing or holds none.
        conversion.ConversionError: two files share a stem.
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f'{what} folder not found: {folder}')
    found = {}
    for name in sorted(os.listdir(folder)):
        stem, extension = os.path.splitext(name)
        if extension.lower() not in extensions:
            continue
        if stem in found:
            raise conversion.ConversionError(
                f'{folder} holds two {what}s of stem {stem!r}: {os.path.basename(found[stem])} '
                f'and {name}; keep one')
        found[stem] = os.path.join(folder, name)
    if not found:
        raise FileNotFoundError(f'no {what} ({", ".join(extensions)}) in {folder}')
    return found


def match(image_dir, mask_dir):
    """Pairs images and masks by stem.

    Returns:
        ({stem: `conversion.Entry`} of the matched pairs, [`conversion.Problem`] naming each
        image without a mask and each mask without an image).
    """
    images = _files_by_stem(image_dir, IMAGE_EXTENSIONS, 'image')
    masks = _files_by_stem(mask_dir, (MASK_EXTENSION,), 'mask')
    unmatched = [conversion.Problem(stem, path, f'image without mask: no {stem}.png in '
                                                f'{mask_dir}')
                 for stem, path in images.items() if stem not in masks]
    unmatched += [conversion.Problem(stem, path, f'mask without image: no {stem}.jpg, .jpeg '
                                                 f'or .png in {image_dir}')
                  for stem, path in masks.items() if stem not in images]
    pairs = {stem: conversion.Entry(stem, path, masks[stem]) for stem, path in images.items()
             if stem in masks}
    return pairs, unmatched


def split_by_ratio(stems, ratios, seed):
    """Assigns stems to splits: shuffled with `seed`, then cut by the ratios in their order.

    Args:
        stems: the image stems (their sorted order is shuffled, so the result does not depend
            on the order given).
        ratios: {split name: fraction}, fractions summing to 1.
        seed: int.

    Returns:
        {split name: [stems]}, each sorted.

    Raises:
        ValueError: fractions not positive or not summing to 1, or a split left empty.
    """
    fractions = np.asarray(list(ratios.values()), float)
    if not ((fractions > 0) & (fractions <= 1)).all() or not abs(fractions.sum() - 1) <= 1e-6:
        raise ValueError(f'split ratios {ratios} must be positive and sum to 1')
    order = [sorted(stems)[i] for i in np.random.default_rng(seed).permutation(len(stems))]
    bounds = np.round(np.concatenate([[0], np.cumsum(fractions)]) * len(stems)).astype(int)
    splits = {name: sorted(order[a:b]) for name, a, b in zip(ratios, bounds, bounds[1:])}
    empty = [name for name, members in splits.items() if not members]
    if empty:
        raise ValueError(f'split ratios {ratios} leave {", ".join(empty)} without an image '
                         f'({len(stems)} images)')
    return splits


def split_by_lists(stems, split_files):
    """Assigns stems to splits from lists of stems, one file per split.

    Args:
        stems: the matched image stems.
        split_files: {split name: file of one stem a line}.

    Returns:
        ({split name: [stems]}, [`conversion.Problem`] for listed stems without a matched pair).

    Raises:
        FileNotFoundError: a list is missing.
        conversion.ConversionError: a list is empty, repeats a stem, or two lists share one.
    """
    available = set(stems)
    splits, listed_in, missing = {}, {}, []
    for name, path in split_files.items():
        ids = voc.read_split_ids(path)
        if not ids:
            raise conversion.ConversionError(f'split list {path} is empty')
        conversion.refuse_repeated(ids, f'split list {path}')
        shared = [i for i in ids if i in listed_in]
        if shared:
            raise conversion.ConversionError(
                f'split lists {listed_in[shared[0]]} and {path} share stems: '
                f'{shared[:messages.MAX_LISTED]}')
        listed_in.update(dict.fromkeys(ids, path))
        missing += [conversion.Problem(i, path, 'listed, but no image and mask of that stem')
                    for i in ids if i not in available]
        splits[name] = [i for i in ids if i in available]
    return splits, missing


def convert_folder(image_dir, mask_dir, classes_file, output_dir, split_files=None,
                   split_ratios=None, seed=0, name='custom', num_shards=None, num_workers=None,
                   skip_invalid=False, progress=True):
    """Validates a folder dataset and writes each split as `{split}-%05d-of-%05d.tfrecord`.

    Args:
        image_dir, mask_dir: the images and the masks, matched by stem.
        classes_file: the class list (see `read_classes`).
        output_dir: where the shards and `dataset.json` go.
        split_files: {split name: list of stems}; or None to split by `split_ratios`.
        split_ratios: {split name: fraction}; default {'train': 0.9, 'val': 0.1}.
        seed: shuffles the stems before cutting them by ratio.
        name: the dataset's name in `dataset.json`.
        num_shards, num_workers, skip_invalid, progress: as `conversion.convert_entries`;
            `skip_invalid` also leaves out unmatched files and listed stems without a pair.

    Returns:
        `FolderConversion`.

    Raises:
        FileNotFoundError: a folder, the class list or a split list is missing.
        ValueError: a bad class list or bad ratios.
        conversion.ConversionError: unmatched files, listed stems without a pair, or an invalid
            entry (and not `skip_invalid`). Nothing is written.
    """
    if split_files and split_ratios:
        raise ValueError('give split lists or split ratios, not both')
    description = dataset(name, classes_file)
    pairs, unmatched = match(image_dir, mask_dir)
    if split_files:
        stems, missing = split_by_lists(pairs, split_files)
    else:
        stems, missing = split_by_ratio(pairs, split_ratios or {'train': 0.9, 'val': 0.1},
                                        seed), []
    problems = unmatched + missing
    if problems and not skip_invalid:
        raise conversion.ConversionError(conversion.describe_problems(
            f'refusing to convert {image_dir} and {mask_dir}: {len(unmatched)} unmatched files, '
            f'{len(missing)} listed stems without a pair; nothing was written', problems),
            problems)
    if problems:
        logger.warning('left out %d unmatched or unlisted files:\n%s', len(problems),
                       messages.listing(problems))
    for split_name, members in stems.items():
        logger.info('split %s: %d images', split_name, len(members))
    results = conversion.convert_entries(
        {split_name: [pairs[stem] for stem in members] for split_name, members in stems.items()},
        description, label_mapping(description), output_dir, num_shards=num_shards,
        num_workers=num_workers, skip_invalid=skip_invalid, progress=progress,
        likely_causes={conversion.VALUES_OUTSIDE: f'most masks hold values beyond the '
                                                  f'{description.num_classes} classes of '
                                                  f'{classes_file}: is it the right class list?'})
    return FolderConversion(results, problems)
