"""Confusion matrix and IoU, checked against matrices worked out by hand."""
import numpy as np
import pytest
import tensorflow as tf

from libs.evaluation import metrics

# Three classes; class 2 never occurs in the ground truth and is predicted only on an ignored
# pixel, so it must come out absent. Pixels:
#   label: 0  0  1  1  255 255
#   pred:  0  1  1  1  2   0
# Confusion (rows ground truth, columns prediction), the 255 pixels contributing nothing:
#   [[1, 1, 0],
#    [0, 2, 0],
#    [0, 0, 0]]
# class 0: TP 1, FP 0, FN 1 -> IoU 1/2
# class 1: TP 2, FP 1, FN 0 -> IoU 2/3
# class 2: TP + FP + FN = 0 -> absent (NaN), left out of the mean
# mIoU = (1/2 + 2/3) / 2 = 7/12; pixel accuracy = 3/4.
HAND_LABELS = [[0, 0, 1], [1, 255, 255]]
HAND_PREDICTIONS = [[0, 1, 1], [1, 2, 0]]
HAND_CONFUSION = [[1, 1, 0], [0, 2, 0], [0, 0, 0]]


def test_confusion_matrix_hand_example_excludes_ignore():
    confusion = metrics.confusion_matrix(
        tf.constant(HAND_LABELS, tf.int32), tf.constant(HAND_PREDICTIONS, tf.int32), 3)
    assert confusion.dtype == tf.int64
    np.testing.assert_array_equal(confusion.numpy(), HAND_CONFUSION)


def test_confusion_matrix_ignore_label_inside_class_range():
    # 255 would fall outside the bincount range anyway; an ignore label that is a valid index
    # shows that ignored pixels are masked out rather than dropped by accident.
    confusion = metrics.confusion_matrix(
        tf.constant([0, 1, 1, 2]), tf.constant([0, 0, 1, 1]), 3, ignore_label=1)
    np.testing.assert_array_equal(confusion.numpy(), [[1, 0, 0], [0, 0, 0], [0, 1, 0]])


def test_iou_hand_example_with_absent_class():
    result = metrics.iou_from_confusion(HAND_CONFUSION)
    np.testing.assert_allclose(result['per_class_iou'][:2], [1 / 2, 2 / 3])
    assert np.isnan(result['per_class_iou'][2])
    np.testing.assert_array_equal(result['present'], [True, True, False])
    assert result['miou'] == pytest.approx(7 / 12)
    assert result['pixel_accuracy'] == pytest.approx(3 / 4)


def test_precision_recall_and_most_confused_hand_example():
    # class 0: precision 1/1, recall 1/2; class 1: precision 2/3, recall 2/2; class 2: neither.
    precision, recall = metrics.precision_recall(HAND_CONFUSION)
    np.testing.assert_allclose(precision[:2], [1, 2 / 3])
    np.testing.assert_allclose(recall[:2], [1 / 2, 1])
    assert np.isnan(precision[2]) and np.isnan(recall[2])
    # Half of class 0's pixels went to class 1; nothing else was confused.
    pairs = metrics.most_confused_pairs(HAND_CONFUSION)
    assert pairs == [{'true': 0, 'predicted': 1, 'share': 0.5, 'pixels': 1}]
    assert metrics.format_confusions(pairs, ['sky', 'road', 'car']).splitlines()[1] == (
        'sky -> road   50.00%  (1 px)')
    # By share of the true class, not by count: 3 of 4 pixels beat 10 of 100.
    pairs = metrics.most_confused_pairs([[90, 10, 0], [3, 1, 0], [0, 0, 5]], count=1)
    assert pairs == [{'true': 1, 'predicted': 0, 'share': 0.75, 'pixels': 3}]


def test_class_only_predicted_counts_as_zero():
    # Class 1 is predicted once but never labelled: TP 0, FP 1 -> IoU 0, and it IS in the mean.
    # class 0: TP 2, FN 1 -> 2/3; mIoU = (2/3 + 0) / 2 = 1/3.
    result = metrics.iou_from_confusion([[2, 1], [0, 0]])
    np.testing.assert_allclose(result['per_class_iou'], [2 / 3, 0.0])
    assert result['miou'] == pytest.approx(1 / 3)


def test_empty_confusion_is_nan():
    result = metrics.iou_from_confusion(np.zeros((3, 3), np.int64))
    assert np.isnan(result['miou']) and np.isnan(result['pixel_accuracy'])
    assert not result['present'].any()


def test_confusion_matrix_in_tf_function_matches_numpy():
    num_classes = 5
    rng = np.random.default_rng(0)
    labels = rng.integers(0, num_classes, size=(2, 37, 29))
    labels[rng.random(labels.shape) < 0.2] = 255
    predictions = rng.integers(0, num_classes, size=labels.shape)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None], tf.int32)] * 2)
    def compute(lab, pred):
        return metrics.confusion_matrix(lab, pred, num_classes)

    expected = np.zeros((num_classes, num_classes), np.int64)
    for gt, pr in zip(labels.ravel(), predictions.ravel()):
        if gt != 255:
            expected[gt, pr] += 1
    np.testing.assert_array_equal(compute(labels, predictions).numpy(), expected)
    assert expected.sum() == (labels != 255).sum()


def test_accumulator_sums_one_matrix_not_per_image_scores():
    # Image A: [[1, 0], [0, 0]] -> only class 0 present, mIoU 1.
    # Image B: [[0, 0], [1, 1]] -> class 0 IoU 0, class 1 IoU 1/2, mIoU 1/4.
    # Mean of per-image mIoU would be 5/8; the split's matrix [[1, 0], [1, 1]] gives
    # class 0: 1/2, class 1: 1/2 -> mIoU 1/2.
    accumulator = metrics.ConfusionAccumulator(2)
    accumulator.update(tf.constant([[1, 0], [0, 0]], tf.int64))
    accumulator.update(np.array([[0, 0], [1, 1]]))
    np.testing.assert_array_equal(accumulator.confusion, [[1, 0], [1, 1]])
    assert accumulator.result()['miou'] == pytest.approx(1 / 2)
    with pytest.raises(ValueError):
        accumulator.update(np.zeros((3, 3)))


def test_format_table():
    result = metrics.iou_from_confusion(HAND_CONFUSION)
    table = metrics.format_table(result, ['background', 'cat', 'dog'])
    lines = table.splitlines()
    assert lines[-1].split() == ['mIoU', '58.33']
    assert [line.split() for line in lines if line.startswith(('background', 'cat', 'dog'))] == [
        ['background', '50.00'], ['cat', '66.67'], ['dog', 'n/a']]
    assert 'pixel accuracy' in table and '75.00' in table
    with pytest.raises(ValueError):
        metrics.format_table(result, ['background', 'cat'])
