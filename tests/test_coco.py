"""The COCO -> VOC-class TFRecord converter, on a tiny COCO-format dataset the test writes."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from pycocotools import coco as coco_api
from pycocotools import mask as mask_api

import convert_coco_to_tfrecord
from libs.datasets import coco, conversion, description, input_pipeline, tfrecord, voc

# pycocotools' decode under numpy 2 warns on every call; not ours to fix.
pytestmark = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEIGHT, WIDTH = 64, 80
VOC_INDEX = {name: i for i, name in enumerate(voc.CLASS_NAMES)}
# COCO names in an order of our own, with ids unlike COCO's: the map must go by name.
CATEGORY_IDS = {name: 100 + 7 * i for i, name in enumerate(
    ['tv', 'giraffe', 'couch', 'person', 'dog', 'airplane', 'bicycle', 'cat', 'bird', 'boat',
     'bottle', 'bus', 'car', 'chair', 'cow', 'dining table', 'horse', 'motorcycle',
     'potted plant', 'sheep', 'train'])}


def box(x0, y0, x1, y1):
    """A rectangle as one COCO polygon."""
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def columns_rle(first, last):
    """Uncompressed crowd RLE of columns first..last (inclusive), every row (column-major)."""
    return {'counts': [first * HEIGHT, (last - first + 1) * HEIGHT, (WIDTH - last - 1) * HEIGHT],
            'size': [HEIGHT, WIDTH]}


def compressed_rle(y0, y1, x0, x1):
    mask = np.zeros((HEIGHT, WIDTH), np.uint8, order='F')
    mask[y0:y1, x0:x1] = 1
    rle = mask_api.encode(mask)
    return {'counts': rle['counts'].decode(), 'size': [HEIGHT, WIDTH]}


# Per image: (category, segmentation, iscrowd), in JSON order.
ANNOTATIONS = {
    'a': [('person', box(10, 10, 40, 40), 0),
          ('dog', box(30, 20, 60, 50), 0),           # drawn later: wins where it covers person
          ('giraffe', box(0, 50, 8, 60), 0),         # not VOC: background
          ('person', columns_rle(65, 74), 1)],       # crowd: ignored
    'b': [('airplane', box(5, 5, 45, 45), 0),
          ('giraffe', box(35, 35, 55, 55), 0),       # later non-VOC covers the airplane's corner
          ('bicycle', compressed_rle(50, 64, 60, 80), 0),
          ('tv', box(60, 2, 75, 12), 0),
          ('couch', box(48, 20, 58, 30), 0)],
    'c': [('cat', box(5, 5, 25, 25), 0),             # ~400 VOC pixels: dropped
          ('giraffe', box(20, 10, 75, 60), 0)],      # many pixels, none of them VOC
}


@pytest.fixture
def coco_dir(tmp_path):
    """annotations/instances.json and images/{a,b,c}.jpg, 80x64 JPEGs; images listed c, a, b.

    Returns:
        (annotation file, image folder).
    """
    (tmp_path / 'images').mkdir()
    (tmp_path / 'annotations').mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for number, name in ((3, 'c'), (1, 'a'), (2, 'b')):
        Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8)).save(
            tmp_path / 'images' / f'{name}.jpg', quality=90)
        images.append({'id': number, 'file_name': f'{name}.jpg', 'height': HEIGHT,
                       'width': WIDTH})
        for category, segmentation, crowd in ANNOTATIONS[name]:
            annotations.append({'id': 1000 + len(annotations), 'image_id': number,
                                'category_id': CATEGORY_IDS[category],
                                'segmentation': segmentation, 'iscrowd': crowd,
                                'area': 0.0, 'bbox': [0, 0, 1, 1]})
    categories = [{'id': i, 'name': n, 'supercategory': 'x'} for n, i in CATEGORY_IDS.items()]
    path = tmp_path / 'annotations' / 'instances.json'
    path.write_text(json.dumps({'images': images, 'annotations': annotations,
                                'categories': categories}))
    return path, tmp_path / 'images'


def expected_label(annotation_file, name):
    """The label composed with pycocotools' own `annToMask`, independently of coco.py."""
    index = coco_api.COCO(str(annotation_file))
    image = next(i for i in index.dataset['images'] if i['file_name'] == f'{name}.jpg')
    by_id = {c['id']: c['name'] for c in index.dataset['categories']}
    label = np.zeros((HEIGHT, WIDTH), np.uint8)
    for ann in index.imgToAnns[image['id']]:
        voc_name = coco.COCO_TO_VOC.get(by_id[ann['category_id']])
        value = 255 if ann['iscrowd'] else VOC_INDEX.get(voc_name, 0)
        label[index.annToMask(ann) == 1] = value
    return label


def convert(coco_dir, out, **kwargs):
    kwargs.setdefault('num_workers', 1)
    annotation_file, image_dir = coco_dir
    return coco.convert_coco(str(annotation_file), str(image_dir), 'coco_train', str(out),
                             progress=False, **kwargs)


def read_labels(out):
    """{image id: int32 label} through the evaluation input pipeline train.py validates with."""
    dataset = input_pipeline.eval_dataset(tfrecord.list_shards(str(out), 'coco_train'))
    return {e['image_id'].numpy().decode(): e['label'].numpy() for e in dataset}


def test_voc_class_map_goes_by_name():
    categories = [{'id': i, 'name': n} for n, i in CATEGORY_IDS.items()]
    mapping, absent = coco.voc_class_map(categories)
    assert absent == [] and len(mapping) == 20
    assert CATEGORY_IDS['giraffe'] not in mapping
    for coco_name, voc_name in (('airplane', 'aeroplane'), ('dining table', 'diningtable'),
                                ('motorcycle', 'motorbike'), ('potted plant', 'pottedplant'),
                                ('couch', 'sofa'), ('tv', 'tvmonitor'), ('person', 'person')):
        assert mapping[CATEGORY_IDS[coco_name]] == VOC_INDEX[voc_name]
    assert sorted(VOC_INDEX[voc.CLASS_NAMES[i]] for i in mapping.values()) == list(range(1, 21))
    mapping, absent = coco.voc_class_map([{'id': 1, 'name': 'person'}])
    assert mapping == {1: 15} and len(absent) == 19 and 'person' not in absent


def test_round_trip(coco_dir, tmp_path):
    out = tmp_path / 'records'
    result = convert(coco_dir, out, num_shards=2)
    assert (result.num_images, result.dropped, result.skipped) == (2, ['c'], [])
    assert sorted(os.listdir(out)) == sorted([description.DESCRIPTION_FILE] + [
        tfrecord.shard_name('coco_train', i, 2) for i in range(2)])

    labels = read_labels(out)
    assert list(labels) == ['a', 'b']  # JSON order; c has too few VOC pixels
    for name, label in labels.items():
        assert label.shape == (HEIGHT, WIDTH)
        np.testing.assert_array_equal(label, expected_label(coco_dir[0], name))
    a, b = labels['a'], labels['b']
    person, dog = VOC_INDEX['person'], VOC_INDEX['dog']
    assert a[15, 15] == person and a[45, 45] == dog
    assert a[30, 35] == dog  # the overlap goes to the later-drawn dog
    assert (a[:, 65:75] == 255).all() and (a != 255).sum() == HEIGHT * (WIDTH - 10)
    assert a[55, 4] == 0  # giraffe
    assert set(np.unique(a)) == {0, person, dog, 255}
    assert b[10, 10] == VOC_INDEX['aeroplane'] and b[40, 40] == 0  # giraffe drawn over it
    assert b[7, 65] == VOC_INDEX['tvmonitor'] and b[25, 52] == VOC_INDEX['sofa']
    assert (b[50:64, 60:80] == VOC_INDEX['bicycle']).all()
    # The description counts the pixels of each VOC class in the kept images (crowd excluded).
    both = np.concatenate([a.ravel(), b.ravel()])
    info = description.read_description(str(out)).splits['coco_train']
    assert info.num_images == 2
    assert info.class_pixels == tuple(np.bincount(both[both != 255], minlength=21))

    records = {}
    for path in tfrecord.list_shards(str(out), 'coco_train'):
        for raw in tf.data.TFRecordDataset(path):
            parsed = tfrecord.parse_example(raw)
            records[parsed['image_id'].numpy().decode()] = raw.numpy()
    example = tf.train.Example.FromString(records['a'])
    stored = example.features.feature['image/encoded'].bytes_list.value[0]
    assert stored == (coco_dir[1] / 'a.jpg').read_bytes()
    assert example.features.feature['image/format'].bytes_list.value[0] == b'jpeg'

    # The training pipeline takes the records as they are.
    images, crops = next(iter(input_pipeline.train_dataset(
        tfrecord.list_shards(str(out), 'coco_train'), batch_size=2, crop_size=33, seed=0)))
    assert images.shape == (2, 33, 33, 3) and crops.shape == (2, 33, 33)
    assert set(np.unique(crops.numpy())) <= set(np.unique(a)) | set(np.unique(b))


def test_min_voc_pixels(coco_dir, tmp_path):
    result = convert(coco_dir, tmp_path / 'all', min_voc_pixels=0)
    assert result.num_images == 3 and result.dropped == []
    label = read_labels(tmp_path / 'all')['c']
    assert 0 < (label == VOC_INDEX['cat']).sum() < coco.DEFAULT_MIN_VOC_PIXELS
    with pytest.raises(conversion.ConversionError, match='at least 100000 VOC-class pixels'):
        convert(coco_dir, tmp_path / 'none', min_voc_pixels=100000)
    assert not (tmp_path / 'none').exists()


def _garbage(image_dir):
    (image_dir / 'b.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')


def _resized(image_dir):
    Image.new('RGB', (WIDTH + 1, HEIGHT)).save(image_dir / 'b.jpg')


def _bad_segmentation(annotation_file):
    data = json.loads(annotation_file.read_text())
    data['annotations'][-1]['segmentation'] = {'counts': 'garbage', 'size': [HEIGHT, WIDTH]}
    annotation_file.write_text(json.dumps(data))


@pytest.mark.parametrize('break_it, where, reason', [
    (lambda f, d: os.remove(d / 'b.jpg'), 'b.jpg', 'missing image'),
    (lambda f, d: _garbage(d), 'b.jpg', 'cannot decode image'),
    (lambda f, d: _resized(d), 'b.jpg', r'image is 81x64, but .*instances.json says 80x64'),
    (lambda f, d: _bad_segmentation(f), 'instances.json', 'annotation 1010: cannot decode'),
])
def test_bad_image_refuses_and_writes_nothing(coco_dir, tmp_path, break_it, where, reason):
    break_it(*coco_dir)
    out = tmp_path / 'records'
    with pytest.raises(conversion.ConversionError, match='1 of 3 images are invalid') as info:
        convert(coco_dir, out)
    (problem,) = info.value.problems
    assert problem.image_id == 'b' and problem.path.endswith(where)
    assert problem.path in str(info.value)
    assert re.search(reason, problem.reason)
    assert not out.exists()

    result = convert(coco_dir, out, skip_invalid=True)
    assert result.num_images == 1 and [p.image_id for p in result.skipped] == ['b']
    assert list(read_labels(out)) == ['a']


def test_bad_annotation_file(coco_dir, tmp_path):
    annotation_file, image_dir = coco_dir
    out = tmp_path / 'records'
    missing = tmp_path / 'nope.json'
    with pytest.raises(FileNotFoundError, match=str(missing)):
        coco.convert_coco(str(missing), str(image_dir), 'coco_train', str(out))
    annotation_file.write_text('{"images": [')
    with pytest.raises(conversion.ConversionError, match=f'{annotation_file}: not a JSON file'):
        convert(coco_dir, out)
    annotation_file.write_text(json.dumps({'images': [], 'annotations': []}))
    with pytest.raises(conversion.ConversionError, match='not a COCO instances file'):
        convert(coco_dir, out)
    annotation_file.write_text(json.dumps({'images': [], 'annotations': [],
                                           'categories': [{'id': 1, 'name': 'giraffe'}]}))
    with pytest.raises(conversion.ConversionError, match='no category is named like a VOC'):
        convert(coco_dir, out)
    assert not out.exists()


def test_script(coco_dir, tmp_path, capsys):
    annotation_file, image_dir = coco_dir
    out = tmp_path / 'records'
    os.remove(image_dir / 'a.jpg')
    argv = ['--annotation-file', str(annotation_file), '--image-dir', str(image_dir),
            '--output-dir', str(out), '--num-workers', '1']
    assert convert_coco_to_tfrecord.main(argv) == 1
    err = capsys.readouterr().err
    assert f'{image_dir / "a.jpg"}: missing image' in err and '--skip-invalid' in err
    assert not out.exists()
    # Worker processes (spawned) and the default split name, as a user runs it.
    done = subprocess.run([sys.executable, os.path.join(REPO, 'convert_coco_to_tfrecord.py')]
                          + argv[:-1] + ['2', '--skip-invalid'],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert 'split coco_train: 1 images' in done.stdout and '1 dropped' in done.stdout
    assert list(read_labels(out)) == ['b']
