"""Other class counts than VOC's: the class names and colours of dataset.json in every output,
restoring a run into another class count, class weights; training and evaluating 19 and 150
classes through the scripts."""
import dataclasses
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import config as config_lib
import evaluate
import predict
from libs.datasets import class_weights, description, tfrecord, voc
from libs.evaluation import prediction
from libs.nets.deeplabv3 import DeepLabV3, upsample_logits
from libs.runs import checkpoints, record
from libs.training import initial_weights
from libs.training.step import build_optimizer, build_train_step
from libs.utils import visualize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 600


def _png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format='PNG')
    return buffer.getvalue()


def write_records(data_dir, name, num_classes, splits, size=65, seed=0):
    """Synthetic records of `num_classes` classes, every class in every label (13 x 13 blocks of
    5 pixels hold up to 169 classes), a row of 255, and their dataset.json with class names
    `<name>_<i>` and colours unlike VOC's.

    Args:
        splits: {split name: number of images}.
    Returns:
        The `DatasetDescription` written.
    """
    rng = np.random.default_rng(seed)
    colours = tuple((int(c), int(255 - c), int(7 * i % 256))
                    for i, c in enumerate(rng.integers(0, 256, num_classes)))
    dataset = description.DatasetDescription(
        name, tuple(f'{name}_{i}' for i in range(num_classes)), colours)
    os.makedirs(data_dir, exist_ok=True)
    for split, count in splits.items():
        pixels = np.zeros(num_classes, np.int64)
        path = os.path.join(data_dir, tfrecord.shard_name(split, 0, 1))
        with tf.io.TFRecordWriter(path) as writer:
            for k in range(count):
                rows, columns = np.mgrid[:size, :size] // 5
                label = ((rows * 13 + columns + k) % num_classes).astype(np.uint8)
                label[size // 2] = 255
                image = np.asarray(colours, np.uint8)[np.minimum(label, num_classes - 1)]
                image = np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)
                pixels += np.bincount(label[label != 255], minlength=num_classes)
                writer.write(tfrecord.make_example(_png(image), 'png', f'{split}_{k}', size, size,
                                                   _png(label)).SerializeToString())
        dataset = description.record_split(dataset, data_dir, split, count, pixels, [path])
    return dataset


@pytest.fixture(scope='module')
def datasets(tmp_path_factory):
    """19-class and 150-class records: 2 train and 1 val image of 65 px each."""
    root = tmp_path_factory.mktemp('classes')
    return {count: (str(root / str(count)),
                    write_records(str(root / str(count)), f'd{count}', count,
                                  {'train': 2, 'val': 1}, seed=count))
            for count in (19, 150)}


def _train(data_dir, run_dir, *flags):
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'train.py'), '--data-dir', data_dir,
         '--split-name', 'train', '--num-layers', '50', '--batch-size', '2',
         '--input-size', '33', '--num-steps', '1', '--save-pred-every', '1',
         '--snapshot-dir', run_dir, *flags], cwd=ROOT, capture_output=True, text=True,
        timeout=TIMEOUT)
    assert done.returncode == 0, f'{done.stdout[-3000:]}\n{done.stderr[-3000:]}'
    return done.stdout


@pytest.fixture(scope='module')
def runs(datasets, trained_run, tmp_path_factory):
    """One step of train.py on each: 19 classes from the 21-class `trained_run` with
    median-frequency weights, 150 from scratch with a file of weights."""
    root = tmp_path_factory.mktemp('class_runs')
    weights_file = root / 'weights.txt'
    weights_file.write_text(''.join(f'{1 + i / 100}\n' for i in range(150)))
    out = {19: _train(datasets[19][0], str(root / 'run19'), '--restore-from',
                      trained_run.run_dir, '--class-weights', 'median-frequency'),
           150: _train(datasets[150][0], str(root / 'run150'), '--class-weights',
                       str(weights_file))}
    return {count: (str(root / f'run{count}'), out[count]) for count in out}


@pytest.mark.slow
def test_train_and_evaluate_19_and_150_classes_with_their_names(datasets, runs, tmp_path,
                                                                 capsys):
    for count in (19, 150):
        data_dir, dataset = datasets[count]
        run_dir, stdout = runs[count]
        with open(os.path.join(run_dir, 'config.json')) as f:
            recorded = json.load(f)
        assert recorded['num_classes'] == count
        assert recorded['class_names'] == list(dataset.class_names)
        assert [tuple(c) for c in recorded['class_colors']] == list(dataset.palette)
        assert len(recorded['class_weight_values']) == count
        assert checkpoints.describe_checkpoint(tf.train.latest_checkpoint(run_dir))[
            'num_classes'] == count
        # The weights, logged by class name before training.
        line = next(line for line in stdout.splitlines() if line.startswith('Class weights'))
        assert f'{dataset.class_names[-1]} ' in line and line.count(', ') == count - 1, line
        output_json = tmp_path / f'{count}.json'
        capsys.readouterr()
        assert evaluate.main(['--restore-from', run_dir, '--data-dir', data_dir,
                              '--split-name', 'val', '--output-json', str(output_json)]) == 0
        table = capsys.readouterr().out
        assert all(f'\n{name} ' in table for name in dataset.class_names), table
        with open(output_json) as f:
            assert list(json.load(f)['per_class_iou']) == list(dataset.class_names)
    # The 19-class run started from the 21-class one and said why its classifier is new.
    assert 'The classifier starts fresh (random weights): 21 classes there, 19 here' in runs[19][1]
    assert 'Class weights (median-frequency): d19_0 ' in runs[19][1]
    assert 'Starting from scratch' in runs[150][1]


@pytest.mark.slow
def test_predict_paints_in_the_dataset_colours(datasets, runs, tmp_path):
    _, dataset = datasets[19]
    photo = np.random.default_rng(0).integers(0, 256, (41, 53, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / 'photo.png')
    out = tmp_path / 'out'
    assert predict.main(['--restore-from', runs[19][0], '--input', str(tmp_path / 'photo.png'),
                         '--output-dir', str(out), '--overlay']) == 0
    with Image.open(out / 'photo.png') as mask:
        palette = np.asarray(mask.getpalette(), np.uint8).reshape(-1, 3)
        assert mask.mode == 'P' and np.array(mask).max() < 19
    np.testing.assert_array_equal(palette[:19], dataset.palette)
    # Indices beyond the classes (255: ignored) keep VOC's colours.
    np.testing.assert_array_equal(palette[19:], voc.PALETTE[19:])
    assert os.path.isfile(out / 'photo_overlay.jpg')
    # A changed config: resuming with other class weights is refused.
    recorded = config_lib.load_run_config(runs[19][0])
    with pytest.raises(ValueError, match='--class-weights was median-frequency, now none'):
        record.check_snapshot_dir(dataclasses.replace(recorded, class_weights='none',
                                                      class_weight_values=None))


def test_overlay_blends_the_class_colour_and_the_legend_shows_it():
    colours = ((0, 0, 0), (250, 10, 30), (20, 200, 90))
    image = np.full((50, 60, 3), 100, np.uint8)
    label = np.zeros((50, 60), np.uint8)
    label[10:20, 10:30] = 2
    drawn = prediction.overlay_with_legend(image, label, ('bg', 'a', 'b'), colours)
    # Half the photo, half the class colour; background untinted.
    np.testing.assert_array_equal(drawn[15, 15], [60, 150, 95])
    np.testing.assert_array_equal(drawn[40, 40], [100, 100, 100])
    # The legend's swatch of the one class present (font 12 px, padding 6).
    np.testing.assert_array_equal(drawn[6 + 6, 60 + 6 + 6], colours[2])


def test_voc_palette_png_is_unchanged_by_class_colours(tmp_path):
    label = np.arange(256, dtype=np.uint8).reshape(16, 16)
    visualize.save_palette_png(tmp_path / 'default.png', label)
    visualize.save_palette_png(tmp_path / 'voc.png', label, voc.dataset().palette)
    assert (tmp_path / 'default.png').read_bytes() == (tmp_path / 'voc.png').read_bytes()


def test_restoring_into_another_class_count_loads_all_but_the_classifier(trained_run, tmp_path):
    config = config_lib.TrainConfig(num_layers=50, num_classes=3, random_seed=7,
                                    restore_from=trained_run.run_dir,
                                    snapshot_dir=str(tmp_path / 'run'))
    model, fresh = checkpoints.build_model(config), checkpoints.build_model(config)
    source, _, _, _ = checkpoints.load_trained_model(trained_run.run_dir)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), config.snapshot_dir,
                                         1)
    lines = []
    assert initial_weights.initialise(config, model, manager, lines.append) is False
    assert ('The classifier starts fresh (random weights): 21 classes there, 3 here; the '
            'backbone and ASPP are loaded') in lines, lines

    def weights(net):
        return [v.numpy() for v in net.backbone.variables + net.aspp.variables]

    loaded, initial = weights(model), weights(fresh)
    assert len(loaded) == len(weights(source)) > 100
    for got, want in zip(loaded, weights(source)):
        np.testing.assert_array_equal(got, want)
    # The situation: loading changed the initial weights.
    assert any(not np.array_equal(a, b) for a, b in zip(loaded, initial))
    assert model.classifier.kernel.shape[-1] == 3 and source.classifier.kernel.shape[-1] == 21
    np.testing.assert_array_equal(model.classifier.kernel.numpy(), fresh.classifier.kernel.numpy())
    # Another depth is still refused, whatever the class count.
    with pytest.raises(ValueError, match='depth: checkpoint has 50 layers, model has 101'):
        checkpoints.check_compatible(tf.train.latest_checkpoint(trained_run.run_dir),
                                     DeepLabV3(num_classes=3, depth=101), other_classes=True)


def _upsample(logits, height, width):
    """Bilinear, corners aligned, in NumPy: [B, h, w, C] -> [B, height, width, C]."""
    def axis(size, target):
        position = np.arange(target) * (size - 1) / max(target - 1, 1)
        low = np.floor(position).astype(int)
        return low, np.minimum(low + 1, size - 1), position - low

    top, bottom, fy = axis(logits.shape[1], height)
    left, right, fx = axis(logits.shape[2], width)
    rows = (logits[:, top] * (1 - fy)[None, :, None, None]
            + logits[:, bottom] * fy[None, :, None, None])
    return (rows[:, :, left] * (1 - fx)[None, None, :, None]
            + rows[:, :, right] * fx[None, None, :, None])


def test_weighted_loss_of_one_step_matches_numpy():
    weights = (0.2, 1.0, 3.0)
    config = config_lib.TrainConfig(num_layers=50, num_classes=3, weight_decay=0.0,
                                    class_weights='file', class_weight_values=weights,
                                    random_seed=3)
    rng = np.random.default_rng(1)
    images = rng.normal(0, 40, (2, 33, 33, 3)).astype(np.float32)
    labels = rng.integers(0, 3, (2, 33, 33)).astype(np.int32)
    labels[:, :4] = 255
    labels[0, 10:20] = 2
    model = checkpoints.build_model(config)
    logits = _upsample(model(tf.constant(images), training=True).numpy().astype(np.float64),
                       33, 33)
    # The NumPy resize is the op's: a check of the helper above.
    np.testing.assert_allclose(_upsample(logits[:, ::8, ::8], 33, 33),
                               upsample_logits(logits[:, ::8, ::8].astype(np.float32),
                                               [33, 33]).numpy(), rtol=1e-5, atol=1e-5)
    valid = labels != 255
    safe = np.where(valid, labels, 0)
    log_norm = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    cross_entropy = log_norm - np.take_along_axis(logits, safe[..., None], -1)[..., 0]
    pixel_weight = np.asarray(weights)[safe] * valid
    expected = np.sum(pixel_weight * cross_entropy) / np.sum(pixel_weight)
    unweighted = np.sum(valid * cross_entropy) / np.sum(valid)

    step = tf.Variable(0, dtype=tf.int64)
    optimizer = build_optimizer(config, step, model)
    train_step = build_train_step(model, optimizer, step, tf.distribute.get_strategy(), config)
    loss, _ = train_step(iter(tf.data.Dataset.from_tensors((images, labels)).repeat()))
    assert float(loss) == pytest.approx(expected, rel=1e-4)
    assert abs(expected - unweighted) > 100 * 1e-4 * expected  # the weights matter here


def test_class_weights_from_pixel_counts():
    pixels = [100, 20, 0, 5, 75]
    frequency = np.array([0.5, 0.1, 0.0, 0.025, 0.375])  # over 200 labelled pixels
    median = (0.1 + 0.375) / 2  # of the 4 classes present
    np.testing.assert_allclose(class_weights.class_weights_from_pixels('median-frequency', pixels),
                               [median / 0.5, median / 0.1, 0.0, median / 0.025, median / 0.375])
    inverse_sqrt = np.array([1 / np.sqrt(f) if f else 0.0 for f in frequency])
    got = class_weights.class_weights_from_pixels('inverse-sqrt', pixels)
    np.testing.assert_allclose(got, inverse_sqrt / np.sum(frequency * inverse_sqrt))
    assert np.sum(frequency * np.asarray(got)) == pytest.approx(1.0)  # the average pixel: 1


def test_class_weights_file_and_class_count_refusals(datasets, tmp_path, capsys):
    data_dir, _ = datasets[19]
    files = tfrecord.list_shards(data_dir, 'train')
    three = tmp_path / 'three.txt'
    three.write_text('1\n2.5\n\n0.5\n')
    base = config_lib.TrainConfig(data_dir=data_dir, split_name='train')
    with pytest.raises(ValueError) as error:
        record.with_dataset_classes(dataclasses.replace(base, class_weights=str(three)), files,
                                    None, print)
    assert str(error.value) == (f'--class-weights {three} holds 3 weights, the model has 19 '
                                'classes: give one weight per class, one a line')
    with pytest.raises(ValueError, match=r'--num-classes 21 contradicts the records: .* holds '
                                         'd19 with 19 classes'):
        record.with_dataset_classes(dataclasses.replace(base, num_classes=21), files, None, print)
    # A line that is no weight: refused when the flags are parsed, naming the file and line.
    bad = tmp_path / 'bad.txt'
    bad.write_text('1\n-2\n')
    parser = config_lib.build_train_parser('train.py')
    with pytest.raises(SystemExit):
        config_lib.parse_train_args(parser, ['--class-weights', str(bad)],
                                    check_snapshot_dir=False)
    assert f"{bad}, line 2: '-2' is not a finite number >= 0" in capsys.readouterr().err
    # Median frequency needs the pixel counts of a description.
    with pytest.raises(ValueError, match='needs the pixel counts of a dataset.json'):
        class_weights.resolve_class_weights('median-frequency', 21, None, data_dir)


def test_two_replicas_take_the_weighted_step_of_one_device():
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'class_weight_checks.py')],
                          cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result['replicas'] == 2, result
    single, mirrored = result['loss']
    assert mirrored == pytest.approx(single, rel=1e-5), result
    assert result['update'] < 1e-3 and result['update_norm'] > 0, result
    # The situation: the replicas' weight sums differ, so normalising each by its own would
    # give another loss.
    low, high = sorted(result['weight_sums'])
    assert high > 4 * low, result
    assert abs(result['naive_loss'] - single) > 1e-2 * single, result


@pytest.mark.slow
def test_benchmark_times_sliding_windows_on_a_non_square_image():
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'benchmark.py'), '--mode', 'inference',
         '--num-layers', '50', '--height', '65', '--width', '97', '--crop-size', '49',
         '--steps', '1', '--warmup', '1', '--json'],
        cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
        env=dict(os.environ, CUDA_VISIBLE_DEVICES=''))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result['image_size'] == [65, 97] and result['crop_size'] == 49
    # 2 rows x 3 columns of 49-pixel windows every 32 pixels cover 65 x 97.
    assert result['windows_per_image'] == 6 and result['stride'] == [32, 32]
    assert 'windows of 49 every 32 px' in result['path']
    assert result['seconds_per_step'] > 0 and result['peak_rss_mb'] > 0
    assert result['gflops_per_image'] > 0
