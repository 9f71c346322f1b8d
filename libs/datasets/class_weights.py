"""Per-class loss weights (`--class-weights`): from the training split's pixel counts in its
`dataset.json`, or from a file. NumPy only, so that the scripts check a file before TensorFlow
starts."""
import math

import numpy as np

# `--class-weights` values other than a file of weights.
CLASS_WEIGHT_METHODS = ('none', 'median-frequency', 'inverse-sqrt')


def class_weights_from_pixels(method, class_pixels):
    """Per-class loss weights from the labelled pixels of each class in the training split.

    With f_c = pixels of class c / labelled pixels of the split:
    - 'median-frequency': w_c = median(f) / f_c, the median over the classes with pixels (median
      frequency balancing of Eigen & Fergus, 2015, as SegNet uses it, with the frequencies of the
      whole split: `dataset.json` keeps no per-image counts, so SegNet's denominator, the pixels
      of the images where c is present, is not available). The median class weighs 1.
    - 'inverse-sqrt': w_c = 1 / sqrt(f_c), scaled so that the average labelled pixel of the split
      weighs 1 (sum_c f_c w_c = 1).
    A class with no pixel in the split gets 0: no pixel of it is trained on, and there is no
    frequency to weigh it by. The scale of the weights does not change the loss, which is
    normalised by the summed weights.

    Args:
        method: one of 'median-frequency', 'inverse-sqrt'.
        class_pixels: C counts.
    Returns:
        tuple of C floats.
    Raises:
        ValueError: no labelled pixel at all, or an unknown method.
    """
    pixels = np.asarray(class_pixels, np.float64)
    if pixels.sum() <= 0:
        raise ValueError('the split has no labelled pixel to compute class weights from')
    present = pixels > 0
    frequency = pixels / pixels.sum()
    weights = np.zeros_like(frequency)
    if method == 'median-frequency':
        weights[present] = np.median(frequency[present]) / frequency[present]
    elif method == 'inverse-sqrt':
        weights[present] = 1.0 / np.sqrt(frequency[present])
        weights /= np.sum(frequency * weights)
    else:
        raise ValueError(f'unknown class-weight method {method!r}; expected one of '
                         f'{", ".join(CLASS_WEIGHT_METHODS[1:])}')
    return tuple(float(w) for w in weights)


def read_class_weights(path):
    """The weights of a `--class-weights` file: one number a line, in class order (blank lines
    are skipped).

    Returns:
        tuple of floats.
    Raises:
        ValueError: naming the file (and line) when it cannot be read, a line is not a finite
            number >= 0, or no weight is above 0.
    """
    try:
        with open(path, encoding='utf-8') as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f'{path}: cannot read it ({e})') from None
    weights = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = float(line)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:
            raise ValueError(f'{path}, line {number}: {line.strip()!r} is not a '
                             'finite number >= 0 (one weight a line, in class order)')
        weights.append(value)
    if not any(weights):
        raise ValueError(f'{path} holds no weight above 0')
    return tuple(weights)


def format_class_weights(method, class_names, weights):
    """The line logged at the start of training: each class name with its weight."""
    return (f'Class weights ({method}): '
            + ', '.join(f'{name} {weight:.4g}' for name, weight in zip(class_names, weights)))


def resolve_class_weights(spec, num_classes, class_pixels, source):
    """The weights `--class-weights spec` gives, or None for 'none'.

    Args:
        spec: 'none', 'median-frequency', 'inverse-sqrt' or a file of weights.
        num_classes: C, the model's.
        class_pixels: C labelled pixel counts of the training split, or None when the records
            have no description.
        source: what holds the pixel counts, for messages (e.g. 'data/records/dataset.json,
            split train').
    Returns:
        tuple of C floats, or None.
    Raises:
        ValueError: a method without pixel counts, or a file of another length, naming the
            file and both counts.
    """
    if spec == 'none':
        return None
    if spec in CLASS_WEIGHT_METHODS:
        if class_pixels is None:
            raise ValueError(f'--class-weights {spec} needs the pixel counts of a dataset.json '
                             f'beside the records, and {source} has none: convert the records '
                             'again, or give a file of weights')
        return class_weights_from_pixels(spec, class_pixels)
    weights = read_class_weights(spec)
    if len(weights) != num_classes:
        raise ValueError(f'--class-weights {spec} holds {len(weights)} weights, the model has '
                         f'{num_classes} classes: give one weight per class, one a line')
    return weights
