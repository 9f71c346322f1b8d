"""Predicting image files: what predict.py does, callable from code.

Each input `<stem>.<ext>` gives `<stem>.png`, the class indices as a palette PNG in the dataset's
colours at the input's own (upright) size, and optionally `<stem>_overlay.jpg`, the photo tinted
with the mask and a legend of the classes found.
"""
import os
import sys

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from libs.datasets import input_pipeline, voc
from libs.utils import image_io, messages, visualize


def trained_predictor(restore_from, options, output_stride=None, reference=None, log=print):
    """The predictor of a run or a published checkpoint, as evaluate.py, predict.py and
    demo_app.py infer:
    its model loaded (`checkpoints.load_trained_model`), batch norm folded in, `options`'
    scales, flip, windows and precision.

    Args:
        restore_from: a run folder, a checkpoint prefix, or a reference checkpoint.
        options: `inference.InferenceOptions`.
        output_stride: overrides the run's.
        reference: for a reference checkpoint, what it does not tell (`config.reference_hints`).
        log: where what was read from a reference checkpoint is reported.
    Returns:
        (`MultiScalePredictor`, the run's `TrainConfig`, checkpoint prefix, global step or None).
    Raises:
        ValueError, FileNotFoundError: in one line, as `load_trained_model` and the options say.
    """
    from libs.nets.folding import FoldedDeepLabV3
    from libs.runs.checkpoints import load_trained_model
    model, run_config, prefix, step = load_trained_model(restore_from, output_stride, reference,
                                                         log)
    # Batch norm folded into the convolutions: the same logits, fewer ops (docs/performance.md).
    predictor = options.predictor(FoldedDeepLabV3(model), run_config.num_classes,
                                  run_config.output_stride)
    return predictor, run_config, prefix, step


def class_names_of(run_config):
    """A run's class names: those its records' description gave (recorded in its config.json);
    for runs recorded before, VOC's for 21 classes, else `class_0`, `class_1`, ..."""
    if run_config.class_names is not None:
        return run_config.class_names
    return voc.dataset(run_config.num_classes).class_names


def class_colors_of(run_config):
    """A run's class colours: those its records' description gave (recorded in its config.json);
    for runs recorded before, VOC's."""
    if run_config.class_colors is not None:
        return run_config.class_colors
    return voc.dataset(run_config.num_classes).palette


# What `--label-ids` may name: datasets whose benchmark reads its own label ids, not class indices.
LABEL_ID_CHOICES = ('cityscapes',)


def label_id_table(name, run_config):
    """The label id of each class index of a run, for prediction PNGs a dataset's own tools read.

    Args:
        name: one of `LABEL_ID_CHOICES`.
        run_config: the run's `TrainConfig`.
    Returns:
        uint8 array [256].
    Raises:
        ValueError: the run was not trained on that dataset's classes.
    """
    from libs.datasets import cityscapes
    if name not in LABEL_ID_CHOICES:
        raise ValueError(f'unknown label ids {name!r}; expected one of {LABEL_ID_CHOICES}')
    names = class_names_of(run_config)
    if not cityscapes.is_cityscapes(names):
        raise ValueError(f"the run's {len(names)} classes ({', '.join(names[:3])}, ...) are not "
                         "Cityscapes' 19 train-id classes: it was trained on another dataset")
    return cityscapes.label_ids_of_train_ids()


def check_label_ids(name, restore_from):
    """Refuses label ids of a dataset the run was not trained on, reading only its config.json
    (before the checkpoint is loaded). A checkpoint without config.json (a published one of the
    reference DeepLab) tells its classes once it is read, and is checked then.

    Raises:
        ValueError, FileNotFoundError: as `label_id_table`, `config.load_run_config`.
    """
    import os

    import config as config_lib
    if not os.path.isfile(os.path.join(config_lib.run_dir_of(restore_from),
                                       config_lib.CONFIG_FILE)):
        return
    label_id_table(name, config_lib.load_run_config(restore_from))


def overlay_with_legend(image, label, class_names, class_colors=None, alpha=0.5):
    """The photo tinted with the class colours, and a legend of the classes present on its right.

    Background (index 0) is left untinted and not listed.

    Args:
        image: uint8 array [H, W, 3].
        label: integer array [H, W] of class indices.
        class_names: names by class index.
        class_colors: (r, g, b) by class index, or None for VOC's.
        alpha: weight of the colour mask.

    Returns:
        uint8 array [max(H, legend height), W + legend width, 3]; the photo at the top left,
        white elsewhere.
    """
    tinted = visualize.overlay(image, label, alpha=alpha, class_colors=class_colors)
    palette = visualize.full_palette(class_colors)
    present = [int(c) for c in np.unique(label) if c != 0]
    entries = [(tuple(int(v) for v in palette[c]),
                class_names[c] if c < len(class_names) else f'class_{c}') for c in present]
    height, width = tinted.shape[:2]
    # Legible next to the photo at any size: a 500-pixel VOC photo gets 20-pixel text.
    font_size = int(np.clip(round(min(height, width) / 25), 12, 32))
    font = ImageFont.load_default(size=font_size)
    pad = font_size // 2
    swatch = font_size
    rows = entries or [(None, 'no object found')]
    text_width = max(font.getbbox(name)[2] for _, name in rows)
    legend_width = pad + swatch + pad + text_width + pad
    row_height = swatch + pad
    canvas = Image.new('RGB', (width + legend_width, max(height, pad + row_height * len(rows))),
                       'white')
    canvas.paste(Image.fromarray(tinted), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, (colour, name) in enumerate(rows):
        top = pad + k * row_height
        if colour is not None:
            draw.rectangle([width + pad, top, width + pad + swatch - 1, top + swatch - 1],
                           fill=colour, outline='black')
        draw.text((width + 2 * pad + swatch, top + swatch // 2), name, fill='black', font=font,
                  anchor='lm')
    return np.asarray(canvas)


class ImageFailure(Exception):
    """One image could not be predicted; the message says why, in one line."""


def predict_file(predictor, path):
    """Reads one image file upright (`image_io.read_rgb`) and predicts its class map.

    Args:
        predictor: as `predict_files`'.
        path: an image file.
    Returns:
        (uint8 array [H, W, 3], the upright photo; int array [H, W], its class indices).
    Raises:
        ImageFailure: 'cannot read image: ...' or 'prediction failed: ...'.
    """
    try:
        image = image_io.read_rgb(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # Pillow signals a broken file with OSError, or SyntaxError for some broken headers.
        raise ImageFailure(f'cannot read image: {e}') from None
    try:
        prediction = predictor.predict(
            input_pipeline.normalize(image, predictor.preprocessing)).numpy()
    except (tf.errors.OpError, ValueError) as e:
        # e.g. out of memory for a huge photo, or a photo larger than --eval-crop-size
        raise ImageFailure(f'prediction failed: {getattr(e, "message", str(e))}') from None
    return image, prediction


def predict_files(predictor, paths, output_dir, class_names, overlay=False, progress=True,
                  log=None, class_colors=None, label_ids=None):
    """Predicts image files one by one; an unreadable file is reported and skipped.

    Args:
        predictor: has `predict(image)`, float32 normalized [H, W, 3] -> int [H, W], and the
            `preprocessing` that normalizes, e.g. a `MultiScalePredictor`.
        paths: image files (see `image_io.list_images`); their stems must differ.
        output_dir: where `<stem>.png` (and `<stem>_overlay.jpg`) go; created if needed.
        class_names: names by class index, for the overlay legend.
        class_colors: (r, g, b) by class index, for the PNGs' palette and the overlays; None for
            VOC's.
        overlay: also write the overlays.
        label_ids: uint8 [256] (`label_id_table`): write `<stem>.png` as greyscale label ids
            of the dataset instead of palette class indices.
        progress: show a progress bar on stderr (only for more than one file).
        log: called with one line per failed file; default: printed to stderr (above the bar).

    Returns:
        List of (path, reason) of the files that were skipped; empty when all were written.
    """
    log = log or (lambda line: tqdm.write(line, file=sys.stderr))
    os.makedirs(output_dir, exist_ok=True)
    failures = []
    for path in tqdm(paths, file=sys.stderr, disable=not progress or len(paths) < 2,
                     desc='predict', unit='img'):
        try:
            image, prediction = predict_file(predictor, path)
        except ImageFailure as e:
            failures.append((path, str(e)))
            log(f'skipped {path}: {e}')
            continue
        outputs = image_io.output_paths(path, output_dir, overlay)
        if label_ids is not None:
            visualize.save_label_id_png(outputs[0], prediction, label_ids)
        else:
            visualize.save_palette_png(outputs[0], prediction, class_colors)
        if overlay:
            image_io.save_image_atomic(
                outputs[1], overlay_with_legend(image, prediction, class_names, class_colors))
    return failures


def format_failures(failures):
    """The lines of `predict_files`' failures, a screenful at most (`messages.listing`)."""
    return messages.listing([f'{path}: {reason}' for path, reason in failures])
