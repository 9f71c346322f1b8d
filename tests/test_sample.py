"""The embedded demo dataset: VOC layout, palette labels, reproducible, convertible."""
import os

import numpy as np
import pytest
from PIL import Image

from libs.datasets import sample, tfrecord, voc, voc_conversion

SAMPLE_INDICES = {0, 255} | {voc.CLASS_NAMES.index(name) for name in sample.SAMPLE_CLASSES}


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp('sample') / 'VOC2012'
    summary = sample.write_sample_dataset(str(root), num_train=10, num_val=4, seed=3)
    return root, summary


def all_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, files in os.walk(root) for f in files)


def test_layout_and_counts(root):
    root, summary = root
    assert (summary['num_train'], summary['num_val'], summary['num_trainval']) == (10, 4, 14)
    assert sum(summary['objects'].values()) > 14
    splits = {s: voc.read_split_ids(str(root / voc.SPLIT_DIR / f'{s}.txt'))
              for s in ('train', 'val', 'trainval')}
    assert [len(splits[s]) for s in ('train', 'val', 'trainval')] == [10, 4, 14]
    assert splits['trainval'] == splits['train'] + splits['val']
    assert splits['train'][0] == '2026_000001'
    ids = splits['trainval']
    assert all_files(root) == sorted(
        [os.path.join(voc.IMAGE_DIR, f'{i}.jpg') for i in ids]
        + [os.path.join(voc.LABEL_DIR, f'{i}.png') for i in ids]
        + [os.path.join(voc.SPLIT_DIR, f'{s}.txt') for s in splits])


def test_images_and_palette_labels(root):
    root, _ = root
    seen = set()
    for image_id in voc.read_split_ids(str(root / voc.SPLIT_DIR / 'trainval.txt')):
        image = Image.open(root / voc.IMAGE_DIR / f'{image_id}.jpg')
        label = Image.open(root / voc.LABEL_DIR / f'{image_id}.png')
        assert image.format == 'JPEG' and image.mode == 'RGB'
        assert label.mode == 'P' and label.getpalette()[:768] == voc.palette_flat()
        assert image.size == label.size and all(96 <= s <= 160 for s in image.size)
        values = set(np.unique(np.array(label)).tolist())
        assert values <= SAMPLE_INDICES
        if values - {0, 255}:
            assert 255 in values  # a void band surrounds every object
        seen |= values
    assert len(seen - {0, 255}) >= 3


def test_same_seed_same_bytes(root, tmp_path):
    root, _ = root
    again = tmp_path / 'again'
    sample.write_sample_dataset(str(again), num_train=10, num_val=4, seed=3)
    assert all_files(again) == all_files(root)
    for name in all_files(root):
        assert (again / name).read_bytes() == (root / name).read_bytes(), name
    other = tmp_path / 'other'
    sample.write_sample_dataset(str(other), num_train=10, num_val=4, seed=4)
    image = os.path.join(voc.IMAGE_DIR, '2026_000001.jpg')
    assert (other / image).read_bytes() != (root / image).read_bytes()


def test_converts_cleanly(root, tmp_path):
    root, _ = root
    for split, count in (('train', 10), ('val', 4)):
        result = voc_conversion.convert_split(str(root), split, str(tmp_path), num_workers=1,
                                          progress=False)
        assert (result.num_images, result.skipped, result.warnings) == (count, [], [])
        assert len(tfrecord.list_shards(str(tmp_path), split)) == 4
