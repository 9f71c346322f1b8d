"""The tf.data pipelines, on tiny records whose image colour encodes the label."""
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from scipy import ndimage

from libs.datasets import input_pipeline, tfrecord

# Each class (and void) is one colour, so a pixel's colour says which label it must carry.
COLOURS = {0: (10, 200, 30), 1: (200, 20, 60), 2: (40, 90, 220), 3: (250, 250, 10),
           255: (128, 128, 128)}
MEAN = np.asarray(input_pipeline.MEAN_RGB, np.float32)


def make_label(height, width, shift=0):
    """An asymmetric layout of classes 1-3 and a void band on background 0."""
    label = np.zeros((height, width), np.uint8)
    label[5 + shift:30, 10:50] = 1
    label[30:34, 10:50] = 255
    label[35:height - 5, 40:width - 7] = 2
    label[10:25, 60 + shift:width - 7] = 3
    return label


def colour_image(label):
    """uint8 [H, W, 3]: COLOURS[label]."""
    lut = np.zeros((256, 3), np.uint8)
    for value, colour in COLOURS.items():
        lut[value] = colour
    return lut[label]


def png(array, mode):
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format='PNG')
    return buffer.getvalue()


LABELS = {'a0': make_label(65, 97), 'a1': make_label(70, 81, shift=3),
          'b0': make_label(66, 90, shift=1)}


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
    """Two shards: a0, a1 in the first, b0 in the second; images stored as lossless PNG."""
    folder = tmp_path_factory.mktemp('records')
    paths = []
    for i, ids in enumerate((('a0', 'a1'), ('b0',))):
        paths.append(str(folder / tfrecord.shard_name('train', i, 2)))
        with tf.io.TFRecordWriter(paths[-1]) as writer:
            for image_id in ids:
                label = LABELS[image_id]
                example = tfrecord.make_example(png(colour_image(label), 'RGB'), 'png', image_id,
                                                *label.shape, png(label, 'L'))
                writer.write(example.SerializeToString())
    return paths


def crops(paths, seed, count=None, **kwargs):
    """numpy (images, labels) of the first `count` batches (all when repeat=False)."""
    kwargs.setdefault('batch_size', 1)
    dataset = input_pipeline.train_dataset(paths, seed=seed, **kwargs)
    return [(i.numpy(), l.numpy()) for i, l in dataset.take(count or -1)]


def assert_colours_match_labels(image, label, where):
    """Where `where`, the de-normalized image pixel is the colour of its label."""
    expected = colour_image(label.astype(np.uint8)).astype(np.float32)
    np.testing.assert_allclose((image + MEAN)[where], expected[where], atol=0.02)


def test_normalize_subtracts_the_mean_pixel():
    assert np.all(input_pipeline.normalize(tf.constant(MEAN)).numpy() == 0)
    np.testing.assert_allclose(input_pipeline.normalize(tf.zeros([2, 1, 3], tf.uint8)).numpy(),
                               np.broadcast_to(-MEAN, (2, 1, 3)))


def test_shapes_and_dtypes(shards):
    dataset = input_pipeline.train_dataset(shards, batch_size=2, crop_size=33, seed=0,
                                           repeat=False)
    image_spec, label_spec = dataset.element_spec
    assert image_spec.shape == (2, 33, 33, 3) and image_spec.dtype == tf.float32
    assert label_spec.shape == (2, 33, 33) and label_spec.dtype == tf.int32
    assert len(list(dataset)) == 1  # 3 records, incomplete batch dropped
    batches = crops(shards, seed=0, count=3, batch_size=2, crop_size=(33, 41))
    assert [b[0].shape for b in batches] == [(2, 33, 41, 3)] * 3


def test_crop_and_mirror_keep_image_and_label_aligned_exactly(shards):
    outputs = [c for seed in range(4) for c in crops(shards, seed, crop_size=(41, 57),
                                                     random_scale=None, repeat=False)]
    assert len(outputs) == 12
    for image, label in outputs:
        assert_colours_match_labels(image[0], label[0], np.ones(label[0].shape, bool))
    assert len({o[1].tobytes() for o in outputs}) > 6  # the windows do move


def test_mirror_flips_image_and_label_together(shards):
    label = LABELS['a0']
    flipped = 0
    for seed in range(8):
        (image, out), = crops(shards[:1], seed, count=1, crop_size=label.shape,
                              random_scale=None, shuffle_buffer=1)
        if not np.array_equal(out[0], label):
            np.testing.assert_array_equal(out[0], label[:, ::-1])
            flipped += 1
        assert_colours_match_labels(image[0], out[0], np.ones(label.shape, bool))
    assert 0 < flipped < 8


def test_padding_is_mean_pixel_and_ignore_label(shards):
    label = LABELS['a0']
    (image, out), = crops(shards[:1], 0, count=1, crop_size=(80, 129), random_scale=None,
                          random_mirror=False, shuffle_buffer=1)
    height, width = label.shape
    np.testing.assert_array_equal(out[0, :height, :width], label)
    assert np.all(out[0, height:] == 255) and np.all(out[0, :, width:] == 255)
    assert np.all(image[0, height:] == 0) and np.all(image[0, :, width:] == 0)
    assert_colours_match_labels(image[0, :height, :width], label, np.ones(label.shape, bool))


def test_random_scale_keeps_alignment(shards):
    padded = checked = 0
    for seed in range(6):
        for image, label in crops(shards, seed, count=3, crop_size=65):
            image, label = image[0], label[0]
            # Bilinear blurs class edges; compare where the whole 3x3 neighbourhood is one class
            # (not on the crop's border, where part of the neighbourhood was cut away).
            uniform = ((ndimage.maximum_filter(label, 3) == ndimage.minimum_filter(label, 3))
                       & (label != 255))
            uniform[[0, -1]] = uniform[:, [0, -1]] = False
            assert_colours_match_labels(image, label, uniform)
            checked += uniform.sum()
            pad = np.all(image == 0, axis=-1)
            assert np.all(label[pad] == 255)
            padded += pad.any()
    assert checked > 0.5 * 18 * 65 * 65
    assert 0 < padded < 18  # scales below 1 pad up to the crop, others do not


def test_same_seed_same_batches(shards):
    first = crops(shards, seed=7, count=4, batch_size=2, crop_size=49)
    again = crops(shards, seed=7, count=4, batch_size=2, crop_size=49)
    other = crops(shards, seed=8, count=4, batch_size=2, crop_size=49)
    for (i1, l1), (i2, l2) in zip(first, again):
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(l1, l2)
    assert any(not np.array_equal(l1, l3) for (_, l1), (_, l3) in zip(first, other))


def test_input_context_reads_its_own_shards(shards):
    counts = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id)
        dataset = input_pipeline.train_dataset(shards, batch_size=1, crop_size=17, repeat=False,
                                               seed=0, input_context=context)
        counts.append(len(list(dataset)))
    assert counts == [2, 1]
    with pytest.raises(ValueError, match='2 shards cannot feed 3 input pipelines'):
        input_pipeline.train_dataset(shards, 1, input_context=tf.distribute.InputContext(3, 0))


def test_eval_dataset_is_full_resolution_in_file_order(shards):
    pattern = shards[0].replace('-00000-of-', '-*-of-')
    elements = list(input_pipeline.eval_dataset(pattern))
    assert [e['image_id'].numpy().decode() for e in elements] == ['a0', 'a1', 'b0']
    for element in elements:
        label = LABELS[element['image_id'].numpy().decode()]
        assert element['image'].dtype == tf.float32 and element['label'].dtype == tf.int32
        assert element['image'].shape == label.shape + (3,)
        np.testing.assert_array_equal(element['label'].numpy(), label)
        np.testing.assert_allclose(element['image'].numpy() + MEAN, colour_image(label),
                                   atol=1e-4)


def test_no_matching_files():
    with pytest.raises(FileNotFoundError, match='no TFRecord file matches /nowhere/x-\\*'):
        input_pipeline.eval_dataset('/nowhere/x-*')


@pytest.mark.parametrize('start_step', [1, 3, 4])
def test_resumed_stream_equals_the_uninterrupted_stream(shards, start_step):
    """3 records, batches of 2: resuming at step 3 starts an epoch, at 1 and 4 it starts inside
    one (a shuffled epoch cut in the middle), and every resumed stream crosses epoch boundaries."""
    kwargs = dict(batch_size=2, crop_size=41, shuffle_buffer=2)
    straight = crops(shards, seed=11, count=8, **kwargs)
    resumed = crops(shards, seed=11, count=8 - start_step, start_example=2 * start_step,
                    **kwargs)
    assert len(resumed) == 8 - start_step
    for step, ((i1, l1), (i2, l2)) in enumerate(zip(straight[start_step:], resumed), start_step):
        np.testing.assert_array_equal(i1, i2, err_msg=f'images of step {step}')
        np.testing.assert_array_equal(l1, l2, err_msg=f'labels of step {step}')
    labels = np.concatenate([l for _, l in straight])
    assert len({label.tobytes() for label in labels}) == len(labels)  # no two crops alike


def record_order(shards, seed, num_examples, start_example=0):
    """The ids of the records the stream yields, from the unpadded size of uncropped images."""
    shapes = {label.shape: image_id for image_id, label in LABELS.items()}
    ids = []
    for image, _ in crops(shards, seed=seed, count=num_examples, crop_size=(80, 129),
                          random_scale=None, random_mirror=False, start_example=start_example):
        content = np.any(image[0] != 0, axis=-1)  # padding is exactly the mean pixel
        ids.append(shapes[(int(content.any(axis=1).sum()), int(content.any(axis=0).sum()))])
    return ids


def test_each_epoch_has_its_own_order_and_resuming_keeps_it(shards):
    order = record_order(shards, seed=11, num_examples=12)
    epochs = [order[i:i + 3] for i in range(0, 12, 3)]
    assert all(sorted(epoch) == ['a0', 'a1', 'b0'] for epoch in epochs), epochs
    assert len({tuple(epoch) for epoch in epochs}) > 1, epochs
    assert record_order(shards, seed=11, num_examples=7, start_example=5) == order[5:]


def test_count_records_reads_headers_and_names_a_truncated_file(shards, tmp_path):
    assert tfrecord.count_records(shards) == 3
    truncated = tmp_path / 'cut.tfrecord'
    truncated.write_bytes(open(shards[0], 'rb').read()[:-10])
    with pytest.raises(ValueError, match=f'{truncated} ends inside a record'):
        tfrecord.count_records([shards[1], str(truncated)])
