"""The Cityscapes, ADE20K and folder converters on the sample dataset in each layout.

Each test computes what the records must hold from the files written and the dataset's own table
(cityscapesscripts' label ids -> train ids, ADE20K's 0 -> 255 and k -> k - 1, the folder's class
list), independently of the converter, and compares it with the decoded records.
"""
import functools
import glob
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from cityscapesscripts.helpers import labels as cityscapes_labels
from PIL import Image

from libs.datasets import (ade20k, cityscapes, conversion, description, folder, sample, tfrecord,
                           voc)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = (65, 97)


def read_records(out, split):
    """{image id: (image bytes, int32 label [H, W])} of a split's records."""
    records = {}
    for raw in tf.data.TFRecordDataset(tfrecord.list_shards(str(out), split)):
        example = tf.train.Example.FromString(raw.numpy())
        parsed = tfrecord.parse_example(raw)
        records[parsed['image_id'].numpy().decode()] = (
            example.features.feature['image/encoded'].bytes_list.value[0],
            parsed['label'].numpy())
    return records


def run_script(*args, timeout=180):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def linked_copy(source, target, folders):
    """`target` with hard links to the files of `folders` (relative paths) of `source`."""
    for name in folders:
        shutil.copytree(source / name, target / name, copy_function=os.link)
    return target


def rewrite(path, values):
    """Replaces a (hard-linked) label file by a greyscale PNG of `values`."""
    os.remove(path)
    Image.fromarray(values, 'L').save(path)


def stored(path):
    """The values a label file stores, as written (no palette or colour mapping)."""
    return np.array(Image.open(path))


def check_split(out, split, expected, num_classes):
    """The records equal `expected` ({id: (image path, label)}) and dataset.json counts them."""
    records = read_records(out, split)
    assert sorted(records) == sorted(expected)
    for image_id, (image_path, label) in expected.items():
        image_bytes, record_label = records[image_id]
        assert image_bytes == open(image_path, 'rb').read()
        np.testing.assert_array_equal(record_label, label)
    info = description.read_description(str(out)).splits[split]
    assert info.num_images == len(expected)
    labels = np.concatenate([label.ravel() for _, label in expected.values()])
    assert info.class_pixels == tuple(np.bincount(labels[labels != 255], minlength=num_classes))


# --- Cityscapes ---------------------------------------------------------------------------------

def train_id(label_id):
    """The official table's train id of a label id; ids without one (255, -1) -> 255."""
    value = cityscapes_labels.id2label[int(label_id)].trainId
    return value if 0 <= value < 255 else 255


@pytest.fixture(scope='module')
def cityscapes_records(tmp_path_factory):
    root = tmp_path_factory.mktemp('cityscapes')
    sample.write_sample_dataset(str(root / 'cs'), num_train=3, num_val=2, size_range=SIZES,
                                seed=0, layout='cityscapes')
    for split in ('train', 'val'):
        cityscapes.convert_split(str(root / 'cs'), split, str(root / 'records'), num_workers=1,
                                 progress=False)
    done = run_script('convert_cityscapes_to_tfrecord.py', '--cityscapes-dir', str(root / 'cs'),
                      '--split-name', 'test', '--output-dir', str(root / 'records'),
                      '--num-workers', '1')
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith('split test: 2 images (Cityscapes test has 1525, unlabelled)')
    return root / 'cs', root / 'records'


def test_cityscapes_label_ids_become_train_ids(cityscapes_records):
    root, out = cityscapes_records
    described = description.read_description(str(out))
    labels = sorted((label for label in cityscapes_labels.labels if 0 <= label.trainId < 255),
                    key=lambda label: label.trainId)
    assert described.class_names == tuple(label.name for label in labels)
    assert len(described.class_names) == 19
    assert described.palette[0] == cityscapes_labels.name2label['road'].color
    seen_ids = set()
    for split in ('train', 'val'):
        expected = {}
        for path in glob.glob(str(root / 'gtFine' / split / '*' / '*_gtFine_labelIds.png')):
            image_id = os.path.basename(path)[:-len(cityscapes.LABEL_SUFFIX)]
            ids = stored(path)
            seen_ids |= set(np.unique(ids).tolist())
            image = path.replace('gtFine', 'leftImg8bit', 1).replace(
                cityscapes.LABEL_SUFFIX, cityscapes.IMAGE_SUFFIX)
            expected[image_id] = (image, np.vectorize(train_id)(ids))
        assert len(expected) == {'train': 3, 'val': 2}[split]
        check_split(out, split, expected, 19)
    # The sample holds ids with a train id and ids without one (unlabeled, ego vehicle, guard
    # rail), so both halves of the mapping were exercised.
    assert {0, 1, 14} <= seen_ids and {7, 24} <= seen_ids


def test_cityscapes_test_split_is_unlabelled_and_refused_for_training(cityscapes_records,
                                                                     capsys):
    import train
    root, out = cityscapes_records
    records = read_records(out, 'test')
    assert len(records) == 2 and all((label == 255).all() for _, label in records.values())
    described = description.read_description(str(out))
    assert not described.splits['test'].labelled and described.splits['val'].labelled
    assert described.splits['test'].class_pixels == (0,) * 19
    with pytest.raises(ValueError, match=r"split 'test' .* has no labels .*\(train, val\)"):
        description.check_split(described, str(out), 'test',
                                tfrecord.list_shards(str(out), 'test'))
    capsys.readouterr()
    run_dir = out.parent / 'run'
    assert train.main(['--data-dir', str(out), '--split-name', 'test', '--num-layers', '50',
                       '--batch-size', '2', '--input-size', '65', '--num-steps', '1',
                       '--snapshot-dir', str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert "error: split 'test'" in err and 'has no labels' in err
    assert not run_dir.exists()


def test_cityscapes_unknown_label_id_is_refused(cityscapes_records, tmp_path):
    root = linked_copy(cityscapes_records[0], tmp_path / 'cs',
                       [os.path.join('leftImg8bit', 'val'), os.path.join('gtFine', 'val')])
    path = sorted(glob.glob(str(root / 'gtFine' / 'val' / '*' / '*.png')))[0]
    ids = stored(path)
    ids[2:4, 2:4] = 40
    rewrite(path, ids)
    with pytest.raises(conversion.ConversionError) as error:
        cityscapes.convert_split(str(root), 'val', str(tmp_path / 'out'), num_workers=1,
                                 progress=False)
    assert f'{path}: label values outside the Cityscapes label ids 0..33: [40]' in \
        str(error.value)
    assert not (tmp_path / 'out').exists()


# --- ADE20K ------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def ade20k_dir(tmp_path_factory):
    """The ADE20K layout, written by make_sample_dataset.py (its one CLI call here)."""
    root = tmp_path_factory.mktemp('ade20k') / 'ADEChallengeData2016'
    done = run_script('make_sample_dataset.py', '--layout', 'ade20k', '--output-dir', str(root),
                      '--num-train', '3', '--num-val', '2', '--seed', '2')
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith('wrote 3 training + 2 validation images (ade20k layout)')
    return root


def test_ade20k_annotations_shift_down_and_zero_is_ignored(ade20k_dir, tmp_path):
    out = tmp_path / 'records'
    for split in ('training', 'validation'):
        ade20k.convert_split(str(ade20k_dir), split, str(out), num_workers=1, progress=False)
        expected, values = {}, set()
        for path in sorted(glob.glob(str(ade20k_dir / 'annotations' / split / '*.png'))):
            raw = stored(path).astype(int)
            values |= set(np.unique(raw).tolist())
            image = path.replace('annotations', 'images', 1)[:-len('.png')] + '.jpg'
            expected[os.path.basename(path)[:-4]] = (image, np.where(raw == 0, 255, raw - 1))
        assert 0 in values and max(values) > 1  # "other" and real classes both occur
        check_split(out, split, expected, 150)
    described = description.read_description(str(out))
    assert described.name == 'ade20k' and described.num_classes == 150
    assert described.class_names[:3] == ('wall', 'building', 'sky')
    assert described.class_names[-1] == 'flag' and len(set(described.palette)) == 150


def test_ade20k_script_refuses_a_value_above_150_naming_file_and_value(ade20k_dir, tmp_path):
    root = linked_copy(ade20k_dir, tmp_path / 'ade', [os.path.join('images', 'validation'),
                                                      os.path.join('annotations', 'validation')])
    bad = sorted((root / 'annotations' / 'validation').iterdir())[1]
    raw = stored(bad)
    raw[0, 0] = 151
    rewrite(bad, raw)
    done = run_script('convert_ade20k_to_tfrecord.py', '--ade20k-dir', str(root), '--split-name',
                      'validation', '--output-dir', str(tmp_path / 'out'), '--num-workers', '1')
    assert done.returncode == 1
    assert f'{bad.stem}: {bad}: label values outside 0..150 (ADE20K SceneParsing): [151]' in \
        done.stderr
    assert "refusing to convert split 'validation': 1 of 2 entries are invalid" in done.stderr
    assert not (tmp_path / 'out').exists()


# --- A folder of masks -------------------------------------------------------------------------

def parse_class_colours(path):
    """{(r, g, b): index} of the sample's classes.txt, read here independently of the converter."""
    colours = {}
    for index, line in enumerate(open(path).read().splitlines()):
        colours[tuple(int(v) for v in line.rsplit(' ', 1)[1].split(','))] = index
    return colours


@pytest.fixture(scope='module')
def folder_samples(tmp_path_factory):
    root = tmp_path_factory.mktemp('folder')
    for name, rgb in (('palette', False), ('rgb', True)):
        sample.write_sample_dataset(str(root / name), num_train=4, num_val=2, size_range=SIZES,
                                    seed=4, layout='folder', rgb_masks=rgb)
    return root


def folder_expectation(root, stems, rgb):
    colours = parse_class_colours(root / 'classes.txt')
    expected = {}
    for stem in stems:
        mask = stored(root / 'masks' / f'{stem}.png')
        if rgb:
            assert mask.ndim == 3
            lookup = {**colours, folder.IGNORE_COLOUR: 255}
            mask = np.vectorize(lambda r, g, b: lookup[(r, g, b)])(*np.moveaxis(mask, -1, 0))
        expected[stem] = (str(root / 'images' / f'{stem}.jpg'), mask)
    return expected


def test_folder_with_split_lists_keeps_the_class_indices(folder_samples, tmp_path):
    root = folder_samples / 'palette'
    out = tmp_path / 'records'
    done = folder.convert_folder(
        str(root / 'images'), str(root / 'masks'), str(root / 'classes.txt'), str(out),
        split_files={'train': str(root / 'splits' / 'train.txt'),
                     'val': str(root / 'splits' / 'val.txt')},
        name='shapes', num_workers=1, progress=False)
    assert done.unmatched == [] and set(done.splits) == {'train', 'val'}
    assert all(not r.warnings for r in done.splits.values())
    for split in ('train', 'val'):
        stems = voc.read_split_ids(str(root / 'splits' / f'{split}.txt'))
        expected = folder_expectation(root, stems, rgb=False)
        assert any((label == 255).any() for _, label in expected.values())
        check_split(out, split, expected, 6)
    described = description.read_description(str(out))
    assert described.name == 'shapes'
    assert described.class_names == ('background',) + sample.SAMPLE_CLASSES
    assert described.palette == sample.folder_colours()


def test_folder_rgb_masks_split_by_ratio(folder_samples, tmp_path):
    root = folder_samples / 'rgb'
    out = tmp_path / 'records'
    done = folder.convert_folder(
        str(root / 'images'), str(root / 'masks'), str(root / 'classes.txt'), str(out),
        split_ratios={'fit': 0.5, 'check': 0.5}, seed=7, num_workers=1, progress=False)
    warnings = done.splits['fit'].warnings
    assert len(warnings) == 1 and 'RGB colours' in warnings[0] and '5 more' in warnings[0]
    stems = sorted(p[:-4] for p in os.listdir(root / 'images'))
    assert folder.split_by_ratio(stems, {'fit': 0.5, 'check': 0.5}, 7) == \
        folder.split_by_ratio(stems[::-1], {'fit': 0.5, 'check': 0.5}, 7)
    seen = []
    for split in ('fit', 'check'):
        split_stems = sorted(read_records(out, split))
        assert len(split_stems) == 3
        seen += split_stems
        check_split(out, split, folder_expectation(root, split_stems, rgb=True), 6)
    assert sorted(seen) == stems


@pytest.fixture
def broken_folder(folder_samples, tmp_path):
    """A copy of the palette sample (hard links) to break."""
    root = tmp_path / 'data'
    for name in ('images', 'masks'):
        os.makedirs(root / name)
        for path in (folder_samples / 'palette' / name).iterdir():
            os.link(path, root / name / path.name)
    os.link(folder_samples / 'palette' / 'classes.txt', root / 'classes.txt')
    return root


def convert_broken(root, out, **kwargs):
    return folder.convert_folder(str(root / 'images'), str(root / 'masks'),
                                 str(root / 'classes.txt'), str(out), num_workers=1,
                                 progress=False, **kwargs)


def test_folder_splits_are_written_all_or_none(folder_samples, tmp_path, monkeypatch):
    """A write failure (a full disk, here raised by the record encoder) on the first image of
    the second split, once the first split's shards are complete: neither split's shards appear,
    and the earlier conversion in that folder (its shards and dataset.json) is left as it was."""
    root = folder_samples / 'palette'
    out = tmp_path / 'records'
    convert = functools.partial(
        folder.convert_folder, str(root / 'images'), str(root / 'masks'),
        str(root / 'classes.txt'), str(out), split_files={
            'train': str(root / 'splits' / 'train.txt'), 'val': str(root / 'splits' / 'val.txt')},
        num_workers=1, progress=False)
    convert(num_shards=1)
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    assert {'train-00000-of-00001.tfrecord', 'val-00000-of-00001.tfrecord',
            'dataset.json'} <= set(before)

    val_ids = set(voc.read_split_ids(str(root / 'splits' / 'val.txt')))
    made = []

    def fail_on_the_second_split(*args):
        made.append(args[2])
        if args[2] in val_ids:
            raise RuntimeError('disk full')
        return real_make_example(*args)

    real_make_example = tfrecord.make_example
    monkeypatch.setattr(tfrecord, 'make_example', fail_on_the_second_split)
    with pytest.raises(RuntimeError, match='disk full'):
        convert(num_shards=2)
    assert sorted(made[:-1]) == sorted(voc.read_split_ids(str(root / 'splits' / 'train.txt')))
    assert made[-1] in val_ids
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


def test_folder_unmatched_files_are_named_and_refused_or_skipped(broken_folder, tmp_path):
    root = broken_folder
    os.remove(root / 'masks' / 'sample_000002.png')
    os.link(root / 'masks' / 'sample_000003.png', root / 'masks' / 'orphan.png')
    with pytest.raises(conversion.ConversionError) as error:
        convert_broken(root, tmp_path / 'out')
    message = str(error.value)
    assert f'sample_000002: {root / "images" / "sample_000002.jpg"}: image without mask' in message
    assert f'orphan: {root / "masks" / "orphan.png"}: mask without image' in message
    assert not (tmp_path / 'out').exists()
    done = convert_broken(root, tmp_path / 'out', skip_invalid=True)
    assert [p.image_id for p in done.unmatched] == ['sample_000002', 'orphan']
    written = {i for split in done.splits for i in read_records(tmp_path / 'out', split)}
    assert written == {f'sample_{k:06d}' for k in (1, 3, 4, 5, 6)}


def test_folder_mask_value_outside_the_classes_is_refused(broken_folder, tmp_path):
    root = broken_folder
    path = root / 'masks' / 'sample_000005.png'
    mask = stored(path)
    mask[1, 1] = 9
    rewrite(path, mask)
    with pytest.raises(conversion.ConversionError) as error:
        convert_broken(root, tmp_path / 'out')
    assert f'sample_000005: {path}: label values outside 0..5 and 255: [9]' in str(error.value)
    assert "refusing to convert splits 'train', 'val': 1 of 6 entries" in str(error.value)
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('text, expected', [
    ('road\nsky\n\n', (('road', 'sky'), None)),
    ('traffic light 250,170,30\nsky #4682b4\n',
     (('traffic light', 'sky'), ((250, 170, 30), (70, 130, 180)))),
    ('road 1,2,3\nsky\n', 'colours for some classes only'),
    ('road\nroad\n', "class 'road' is listed twice"),
    ('road 1,2,3\nsky 1,2,3\n', r'colour \(1, 2, 3\) is given to road, sky'),
    ('void 224,224,192\n', 'is the ignore colour'),
    ('road 1,2,300\n', ':1: colour 1,2,300 has a value above 255'),
])
def test_class_lists(tmp_path, text, expected):
    path = tmp_path / 'classes.txt'
    path.write_text(text)
    if isinstance(expected, tuple):
        assert folder.read_classes(str(path)) == expected
    else:
        with pytest.raises(ValueError, match=expected):
            folder.read_classes(str(path))


def test_folder_script_with_split_lists(folder_samples, tmp_path):
    root = folder_samples / 'rgb'
    out = tmp_path / 'records'
    folders = ('--image-dir', str(root / 'images'), '--mask-dir', str(root / 'masks'),
               '--classes', str(root / 'classes.txt'), '--output-dir', str(out))
    done = run_script('convert_folder_to_tfrecord.py', *folders,
                      '--split-list', f'fit={root / "splits" / "train.txt"}',
                      '--split-list', f'hold_out={root / "splits" / "val.txt"}',
                      '--num-workers', '1')
    assert done.returncode == 0, done.stderr
    assert 'split fit: 4 images' in done.stdout and 'split hold_out: 2 images' in done.stdout
    assert set(description.read_description(str(out)).splits) == {'fit', 'hold_out'}
    refused = run_script('convert_folder_to_tfrecord.py', *folders,
                         '--split-ratio', 'train=0.9,val=0.3')
    assert refused.returncode == 2 and 'must be positive and sum to 1' in refused.stderr
