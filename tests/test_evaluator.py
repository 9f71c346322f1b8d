"""evaluate_dataset against a recomputation from the prediction PNGs it writes."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from libs.evaluation import evaluator, inference
from libs.utils import visualize

NUM_CLASSES = 4  # class 3 is never labelled and never predicted: it must come out absent
SIZES = [(65, 81), (70, 66), (81, 65)]


class PoolNet(tf.Module):
    """Stand-in network: average pool at the output stride, then a fixed 1x1 classifier.

    The logits follow the image's colour channels (class 3 is strongly suppressed), so the
    predictions vary across each image and mostly agree with `_example`'s labels.
    """

    def __call__(self, images, training=False, output_stride=4):
        pooled = tf.nn.avg_pool2d(images, output_stride, output_stride, 'SAME')
        weights = tf.constant([[1., 0., 0., 0.], [0., 1., 0., 0.], [0., 0., 1., 0.]])
        return tf.einsum('bhwc,ck->bhwk', pooled, weights) + [0., 0., 0., -1e4]


def _example(index, height, width):
    rng = np.random.default_rng(index)
    # Smooth blobs so that pooled predictions are right in places and wrong near edges.
    coarse = rng.normal(scale=60.0, size=(height // 8 + 2, width // 8 + 2, 3)).astype(np.float32)
    image = tf.image.resize(coarse[None], (height, width))[0].numpy()
    label = np.argmax(image, axis=-1).astype(np.int32)
    label[rng.random((height, width)) < 0.1] = 255
    return {'image': image, 'label': label, 'image_id': f'img_{index}'}


def _dataset():
    examples = [_example(i, h, w) for i, (h, w) in enumerate(SIZES)]

    def generate():
        yield from examples

    signature = {'image': tf.TensorSpec([None, None, 3], tf.float32),
                 'label': tf.TensorSpec([None, None], tf.int32),
                 'image_id': tf.TensorSpec([], tf.string)}
    return tf.data.Dataset.from_generator(generate, output_signature=signature), examples


def _predictor():
    return inference.MultiScalePredictor(PoolNet(), NUM_CLASSES, output_stride=4,
                                         scales=(0.75, 1.0), flip=True)


def test_miou_equals_recomputation_from_saved_pngs(tmp_path):
    dataset, examples = _dataset()
    result = evaluator.evaluate_dataset(_predictor(), dataset, NUM_CLASSES,
                                        save_predictions_dir=str(tmp_path), progress=False)
    assert result['num_images'] == 3
    assert sorted(os.listdir(tmp_path)) == ['img_0.png', 'img_1.png', 'img_2.png']

    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for example in examples:
        prediction = visualize.read_label_png(str(tmp_path / f'{example["image_id"]}.png'))
        assert prediction.shape == example['label'].shape
        valid = example['label'] != 255
        np.add.at(confusion, (example['label'][valid], prediction[valid]), 1)
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    ious = [tp[c] / union[c] for c in range(NUM_CLASSES) if union[c] > 0]

    assert result['confusion_matrix'] == confusion.tolist()
    assert result['miou'] == pytest.approx(np.mean(ious), abs=1e-12)
    assert result['pixel_accuracy'] == pytest.approx(tp.sum() / confusion.sum(), abs=1e-12)
    assert result['per_class_iou'][3] is None
    # Not a degenerate case: three classes are present, partly right, partly wrong.
    assert len(ious) == 3 and 0.3 < result['miou'] < 0.99


def test_max_images_and_json_report(tmp_path):
    dataset, _ = _dataset()
    result = evaluator.evaluate_dataset(_predictor(), dataset, NUM_CLASSES, progress=False,
                                        max_images=2)
    assert result['num_images'] == 2
    assert sum(map(sum, result['confusion_matrix'])) == sum(
        (_example(i, h, w)['label'] != 255).sum() for i, (h, w) in enumerate(SIZES[:2]))

    names = ['background', 'red', 'green', 'blue']
    report = evaluator.result_to_json_dict(result, names, scales=[0.75, 1.0], flip=True,
                                           output_stride=4, checkpoint='ckpt-7', global_step=7)
    path = tmp_path / 'eval.json'
    evaluator.write_json_atomic(str(path), report)
    assert os.listdir(tmp_path) == ['eval.json']
    with open(path) as f:
        loaded = json.load(f)
    assert loaded['per_class_iou'] == dict(zip(names, result['per_class_iou']))
    assert loaded['per_class_iou']['blue'] is None
    # Precision and recall by name, recomputed from the saved counts.
    confusion = np.array(loaded['confusion_matrix'])
    assert loaded['class_names'] == names
    for c, name in enumerate(names[:3]):
        assert loaded['per_class_precision'][name] == pytest.approx(
            confusion[c, c] / confusion[:, c].sum())
        assert loaded['per_class_recall'][name] == pytest.approx(
            confusion[c, c] / confusion[c].sum())
    assert loaded['per_class_recall']['blue'] is None
    worst = loaded['most_confused'][0]
    i, j = names.index(worst['true']), names.index(worst['predicted'])
    shares = confusion[:3] / confusion[:3].sum(axis=1, keepdims=True)  # blue: no pixel
    np.fill_diagonal(shares, 0)
    assert worst['share'] == pytest.approx(shares.max()) == confusion[i, j] / confusion[i].sum()
    assert worst['pixels'] == confusion[i, j] > 0
    assert loaded['miou'] == result['miou'] and loaded['global_step'] == 7
    with pytest.raises(ValueError):
        evaluator.result_to_json_dict(result, names, miou=1.0)


def test_label_size_mismatch_is_refused():
    dataset = tf.data.Dataset.from_tensors({
        'image': tf.zeros([65, 65, 3]), 'label': tf.zeros([33, 33], tf.int32),
        'image_id': tf.constant('a')})
    with pytest.raises(ValueError, match='never resized'):
        evaluator.evaluate_dataset(_predictor(), dataset, NUM_CLASSES, progress=False)
