"""Segmentation metrics: the confusion matrix and the IoU scores derived from it.

PASCAL VOC's score (DESIGN.md, "VOC conventions") is computed from ONE confusion matrix accumulated
over the whole split, with the ignore label (255, boundaries and void) excluded:
IoU_c = TP_c / (TP_c + FP_c + FN_c), and mIoU is the mean of IoU_c over the classes that occur in the
ground truth or in the predictions. It is never a mean of per-image scores.
"""
import numpy as np
import tensorflow as tf


def confusion_matrix(labels, predictions, num_classes, ignore_label=255):
    """Counts (ground truth, prediction) pairs over the pixels that are not ignored.

    Graph-safe: works eagerly and inside `tf.function`, for any (dynamic) input shape.

    Args:
        labels: integer tensor of any shape, e.g. [H, W] or [B, H, W]; values in
            [0, num_classes) or `ignore_label`. Other values are an error of the input pipeline
            and are not checked here (labels >= num_classes fall outside the bincount range and
            go uncounted).
        predictions: integer tensor of the same shape as `labels`, values in [0, num_classes).
        num_classes: number of classes C.
        ignore_label: label value whose pixels contribute nothing.

    Returns:
        int64 tensor [C, C]; entry [i, j] counts pixels of ground-truth class i predicted as j
        (rows are ground truth, columns are predictions).
    """
    labels = tf.reshape(tf.cast(labels, tf.int64), [-1])
    predictions = tf.reshape(tf.cast(predictions, tf.int64), [-1])
    keep = tf.not_equal(labels, ignore_label)
    labels = tf.boolean_mask(labels, keep)
    predictions = tf.boolean_mask(predictions, keep)
    # One bincount over the flat index label * C + prediction fills the whole matrix at once.
    counts = tf.math.bincount(
        labels * num_classes + predictions,
        minlength=num_classes * num_classes,
        maxlength=num_classes * num_classes,
        dtype=tf.int64)
    return tf.reshape(counts, [num_classes, num_classes])


def iou_from_confusion(confusion):
    """Per-class IoU, mIoU and pixel accuracy from a confusion matrix.

    Args:
        confusion: array-like [C, C] of counts, rows ground truth, columns predictions.

    Returns:
        dict with
            `per_class_iou`: float64 [C], TP / (TP + FP + FN); NaN where TP + FP + FN == 0;
            `present`: bool [C], True where TP + FP + FN > 0;
            `miou`: float, mean of `per_class_iou` over present classes (as tf.metrics.mean_iou
                does); NaN if no class is present;
            `pixel_accuracy`: float, trace / sum; NaN for an empty matrix.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f'confusion matrix must be square [C, C], got shape {confusion.shape}')
    true_positive = np.diag(confusion)
    false_positive = confusion.sum(axis=0) - true_positive
    false_negative = confusion.sum(axis=1) - true_positive
    union = true_positive + false_positive + false_negative
    present = union > 0
    per_class_iou = np.full(confusion.shape[0], np.nan)
    per_class_iou[present] = true_positive[present] / union[present]
    # A class absent from both ground truth and predictions has an undefined IoU; averaging it
    # in as 0 or 1 would bias the mean, so it is left out.
    miou = float(per_class_iou[present].mean()) if present.any() else float('nan')
    total = confusion.sum()
    pixel_accuracy = float(true_positive.sum() / total) if total > 0 else float('nan')
    return {
        'per_class_iou': per_class_iou,
        'present': present,
        'miou': miou,
        'pixel_accuracy': pixel_accuracy,
    }


def precision_recall(confusion):
    """Per-class precision TP / (TP + FP) (of the pixels predicted as c, the share that are c)
    and recall TP / (TP + FN) (of the pixels of c, the share found).

    Args:
        confusion: array-like [C, C] of counts, rows ground truth, columns predictions.

    Returns:
        (precision, recall): float64 [C] each; NaN where the class was never predicted (precision)
        or never labelled (recall).
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positive = np.diag(confusion)
    with np.errstate(invalid='ignore', divide='ignore'):
        precision = np.where(confusion.sum(axis=0) > 0, true_positive / confusion.sum(axis=0),
                             np.nan)
        recall = np.where(confusion.sum(axis=1) > 0, true_positive / confusion.sum(axis=1), np.nan)
    return precision, recall


def most_confused_pairs(confusion, count=5):
    """The pairs (true class, predicted class) with the largest share of the true class's pixels
    predicted as the other, largest first; pairs with no pixel are left out.

    Args:
        confusion: array-like [C, C] of counts, rows ground truth, columns predictions.
        count: at most this many pairs.

    Returns:
        list of dicts with `true` and `predicted` (class indices), `share` (float in (0, 1]: the
        pair's pixels over the true class's labelled pixels) and `pixels` (int).
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    rows = confusion.sum(axis=1)
    pairs = [(confusion[i, j] / rows[i], int(confusion[i, j]), i, j)
             for i in range(confusion.shape[0]) for j in range(confusion.shape[1])
             if i != j and confusion[i, j] > 0]
    pairs.sort(key=lambda pair: (-pair[0], -pair[1], pair[2], pair[3]))
    return [{'true': i, 'predicted': j, 'share': float(share), 'pixels': pixels}
            for share, pixels, i, j in pairs[:count]]


def format_confusions(pairs, class_names):
    """The lines of `most_confused_pairs`: 'cat -> dog  12.34% of cat's pixels (1234 px)'."""
    if not pairs:
        return 'most confused: none (every labelled pixel predicted right)'
    width = max(len(class_names[p['true']]) + len(class_names[p['predicted']]) + 4
                for p in pairs)
    lines = ['most confused (true -> predicted: share of the true class\'s pixels)']
    for p in pairs:
        true, predicted = class_names[p['true']], class_names[p['predicted']]
        lines.append(f'{f"{true} -> {predicted}":<{width}}  {100.0 * p["share"]:6.2f}%  '
                     f'({p["pixels"]} px)')
    return '\n'.join(lines)


class ConfusionAccumulator:
    """Sums confusion matrices over a whole split, on the host, in int64.

    Attributes:
        num_classes: C.
        confusion: int64 [C, C], the running sum.
    """

    def __init__(self, num_classes):
        self.num_classes = num_classes
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, confusion):
        """Adds one matrix [C, C] (a tensor or an array), e.g. one image's or one batch's."""
        confusion = np.asarray(confusion)
        if confusion.shape != self.confusion.shape:
            raise ValueError(
                f'expected a confusion matrix of shape {self.confusion.shape}, got {confusion.shape}')
        self.confusion += confusion.astype(np.int64)

    def result(self):
        """The scores of the accumulated matrix; see `iou_from_confusion`."""
        return iou_from_confusion(self.confusion)


def format_table(result, class_names):
    """Renders per-class IoU, then mIoU and pixel accuracy, as a fixed-width text table.

    Args:
        result: dict with `per_class_iou` ([C] floats, NaN or None for absent classes), `miou`
            and `pixel_accuracy`, as returned by `iou_from_confusion` or `evaluate_dataset`.
        class_names: C names, in class-index order.

    Returns:
        The table as one string; its last line holds mIoU.
    """
    per_class_iou = list(result['per_class_iou'])
    if len(per_class_iou) != len(class_names):
        raise ValueError(
            f'{len(per_class_iou)} IoU values but {len(class_names)} class names')
    width = max(len(name) for name in ('pixel accuracy', *class_names))
    lines = [f'{"class":<{width}}  IoU (%)', '-' * (width + 9)]
    for name, iou in zip(class_names, per_class_iou):
        lines.append(f'{name:<{width}}  {_percent(iou)}')
    lines.append('-' * (width + 9))
    lines.append(f'{"pixel accuracy":<{width}}  {_percent(result["pixel_accuracy"])}')
    lines.append(f'{"mIoU":<{width}}  {_percent(result["miou"])}')
    return '\n'.join(lines)


def _percent(value):
    """`value` as a percentage with 2 decimals, right-aligned in 7 columns; 'n/a' for None/NaN."""
    if value is None or np.isnan(value):
        return f'{"n/a":>7}'
    return f'{100.0 * value:7.2f}'
