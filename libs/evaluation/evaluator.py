"""Evaluation over a whole split: predict every image, accumulate ONE confusion matrix.

DESIGN.md, "VOC conventions": images are predicted at full resolution, the label is never resized,
255 is excluded, and mIoU comes from the confusion matrix of the whole split.
"""
import json
import os
import sys

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from libs.evaluation import metrics
from libs.utils import visualize
from libs.utils.image_io import atomic_output


def check_label_values(image_id, label, num_classes, ignore_label):
    """Refuses a label holding a value the model has no class for.

    `metrics.confusion_matrix` would drop such pixels silently and report a meaningless mIoU.

    Args:
        image_id: names the image in the message.
        label: int array [H, W].
    Raises:
        ValueError: naming the image, the label value and the class count.
    """
    outside = (label != ignore_label) & ((label < 0) | (label >= num_classes))
    if outside.any():
        raise ValueError(
            f'{image_id}: label {int(label[outside].max())} found, but the model has '
            f'{num_classes} classes (0..{num_classes - 1}, {ignore_label} ignored): the records '
            'were converted for another class count than the run was trained with')


def evaluate_dataset(predictor, dataset, num_classes, ignore_label=255, save_predictions_dir=None,
                     progress=True, max_images=None, on_prediction=None, num_images=None,
                     class_colors=None, label_ids=None):
    """Predicts every image of `dataset` and scores the predictions against the labels.

    Args:
        predictor: object with `predict(image)` mapping float32 [H, W, 3] to int [H, W], e.g. a
            `MultiScalePredictor`.
        dataset: unbatched `tf.data.Dataset` of dicts with `image` (float32 [H, W, 3],
            normalized), `label` (int [H, W], 255 ignored) and `image_id` (tf.string).
        num_classes: C.
        ignore_label: label value excluded from the score.
        save_predictions_dir: if given, each prediction is written there as the palette PNG
            `<image_id>.png` (the folder is created), in `class_colors` (None: VOC's).
        label_ids: uint8 [256] (`prediction.label_id_table`): the saved PNGs hold the dataset's
            label ids (greyscale) instead of palette class indices.
        progress: show a progress bar on stderr.
        max_images: evaluate only the first `max_images` images.
        num_images: how many images `dataset` holds, for the progress bar's total and ETA (a
            dataset of TFRecords does not know it).
        on_prediction: if given, called after each image as `on_prediction(image_id, image,
            label, prediction)` with the id (str) and NumPy arrays (image float32 [H, W, 3]
            normalized, label and prediction int [H, W]), e.g. to score images one by one.

    Returns:
        dict with `miou` (float, None if no pixel was scored), `per_class_iou` (list of C floats,
        None for classes absent from labels and predictions), `per_class_precision` and
        `per_class_recall` (lists of C floats, None for classes never predicted, resp. never
        labelled; `metrics.precision_recall`), `pixel_accuracy` (float or None),
        `confusion_matrix` (C lists of C ints, rows ground truth), `most_confused`
        (`metrics.most_confused_pairs`) and `num_images`.

    Raises:
        ValueError: if the dataset yields no image, a label's size differs from its image's, or a
            label holds a value outside 0..num_classes-1 other than `ignore_label`.
    """
    if max_images is not None:
        dataset = dataset.take(max_images)
    if save_predictions_dir is not None:
        os.makedirs(save_predictions_dir, exist_ok=True)
    cardinality = int(dataset.cardinality())
    total = cardinality if cardinality >= 0 else num_images
    if total is not None and max_images is not None:
        total = min(total, max_images)
    accumulator = metrics.ConfusionAccumulator(num_classes)
    num_images = 0
    for example in tqdm(dataset, total=total, file=sys.stderr, disable=not progress,
                        desc='evaluate', unit='img'):
        image_id = example['image_id'].numpy().decode('utf-8')
        label = example['label']
        if label.shape != example['image'].shape[:2]:
            raise ValueError(
                f'{image_id}: label size {label.shape} differs from image size '
                f'{example["image"].shape[:2]}; labels are never resized for evaluation')
        check_label_values(image_id, label.numpy(), num_classes, ignore_label)
        prediction = predictor.predict(example['image'])
        accumulator.update(metrics.confusion_matrix(label, prediction, num_classes, ignore_label))
        if save_predictions_dir is not None and label_ids is not None:
            visualize.save_label_id_png(os.path.join(save_predictions_dir, _png_name(image_id)),
                                        prediction.numpy(), label_ids)
        elif save_predictions_dir is not None:
            visualize.save_palette_png(
                os.path.join(save_predictions_dir, _png_name(image_id)), prediction.numpy(),
                class_colors)
        if on_prediction is not None:
            on_prediction(image_id, example['image'].numpy(), label.numpy(), prediction.numpy())
        num_images += 1
    if num_images == 0:
        raise ValueError('the dataset yielded no images to evaluate')
    scores = accumulator.result()
    precision, recall = metrics.precision_recall(accumulator.confusion)
    return {
        'miou': _none_if_nan(scores['miou']),
        'per_class_iou': [_none_if_nan(v) for v in scores['per_class_iou']],
        'per_class_precision': [_none_if_nan(v) for v in precision],
        'per_class_recall': [_none_if_nan(v) for v in recall],
        'pixel_accuracy': _none_if_nan(scores['pixel_accuracy']),
        'confusion_matrix': accumulator.confusion.tolist(),
        'most_confused': metrics.most_confused_pairs(accumulator.confusion),
        'num_images': num_images,
    }


def result_to_json_dict(result, class_names, **extra):
    """The JSON report of an evaluation: per-class IoU, precision and recall keyed by class name,
    the confusion matrix with `class_names` (its rows and columns in order), the most confused
    pairs by name, plus run details.

    Args:
        result: dict returned by `evaluate_dataset`.
        class_names: C names in class-index order.
        **extra: further keys to record, e.g. scales, flip, output_stride, checkpoint,
            global_step.

    Returns:
        dict, serializable with `json.dump(..., allow_nan=False)`.
    """
    if len(class_names) != len(result['per_class_iou']):
        raise ValueError(
            f'{len(class_names)} class names but {len(result["per_class_iou"])} IoU values')
    clashes = sorted(set(extra) & (set(result) | {'per_class_iou', 'class_names'}))
    if clashes:
        raise ValueError(f'extra keys would overwrite evaluation results: {clashes}')
    report = dict(result)
    for key in ('per_class_iou', 'per_class_precision', 'per_class_recall'):
        if key in result:
            report[key] = {name: _none_if_nan(value)
                           for name, value in zip(class_names, result[key])}
    if 'most_confused' in result:
        report['most_confused'] = [dict(pair, true=class_names[pair['true']],
                                        predicted=class_names[pair['predicted']])
                                   for pair in result['most_confused']]
    report['class_names'] = list(class_names)
    report.update(extra)
    return report


def write_json_atomic(path, obj):
    """Writes `obj` as indented JSON under a temporary name in the same folder, then renames it.

    NaN is refused (it is not JSON); use None for undefined values.
    """
    with atomic_output(path, 'w') as f:
        json.dump(obj, f, indent=2, allow_nan=False)
        f.write('\n')


def _png_name(image_id):
    """`<image_id>.png`, refusing ids that would escape the predictions folder."""
    if not image_id or image_id in ('.', '..') or '/' in image_id or os.sep in image_id:
        raise ValueError(f'image id {image_id!r} is not a plain file name')
    return f'{image_id}.png'


def _none_if_nan(value):
    """A Python float, or None for None/NaN (undefined scores)."""
    if value is None or np.isnan(value):
        return None
    return float(value)
