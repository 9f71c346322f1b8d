"""Evaluating a training run's checkpoint on a split: what evaluate.py does, callable from code."""
import contextlib
import os
import tempfile

import config as config_lib
from libs.datasets import description, input_pipeline, tfrecord
from libs.evaluation import cityscapes_eval, metrics, report as report_lib
from libs.evaluation.evaluator import evaluate_dataset, result_to_json_dict, write_json_atomic
from libs.evaluation.inference import InferenceOptions
from libs.evaluation.prediction import (class_colors_of, class_names_of, label_id_table,
                                        trained_predictor)
from libs.evaluation.tflite import TFLitePredictor
from libs.nets import variants


def evaluate_checkpoint(restore_from, data_dir, split_name='val', output_stride=None,
                        options=InferenceOptions(), output_json=None, save_predictions_dir=None,
                        max_images=None, progress=True, log=print, report_dir=None,
                        tflite_model=None, label_ids=None, cityscapes_dir=None,
                        reference=None):
    """Evaluates a run's checkpoint at full resolution and reports per-class IoU and mIoU.

    Args:
        restore_from: a snapshot dir (its latest checkpoint) or a checkpoint prefix in one.
        data_dir: folder of TFRecord shards; `split_name` picks the shards.
        output_stride: overrides the run's (a model trained at OS 16 is evaluated at OS 8 in the
            paper, section 4.1).
        options: `InferenceOptions` (scales, flips, sliding windows, precision).
        output_json: where to write the JSON report (atomically), or None.
        save_predictions_dir: where to write one palette PNG per image, or None.
        max_images: evaluate only the first N images.
        log: where the table goes.
        report_dir: where to write an HTML report (confusion matrix, per-class IoU, worst and
            best images; see `report.write_report`), or None.
        tflite_model: evaluate this TFLite file (`tflite.export_tflite` of the run) instead of
            the checkpoint's network, e.g. to measure what int8 quantization costs; the run
            still gives the classes. `options` must then be the default.
        label_ids: save the predictions as this dataset's label ids (`prediction.LABEL_ID_CHOICES`,
            e.g. 'cityscapes') instead of palette class indices.
        cityscapes_dir: also score the predictions with Cityscapes' own script
            (`cityscapes_eval`) against `<cityscapes_dir>/gtFine/<split_name>`; both mIoUs are
            logged and the script's goes into the report as `cityscapes_official`. The
            predictions are then written as label ids, into `save_predictions_dir` or a
            temporary folder.
        reference: for a published checkpoint of the reference DeepLab, what it does not tell
            (`checkpoints.load_trained_model`).
    Returns:
        The JSON report as a dict.
    """
    files = tfrecord.list_shards(data_dir, split_name)
    if tflite_model:
        if options != InferenceOptions():
            raise ValueError('a TFLite model runs one scale on its canvas, in its own precision')
        # The export holds the network: the run gives only its classes, not its weights.
        run_config, step = config_lib.load_run_config(restore_from), None
    else:
        predictor, run_config, prefix, step = trained_predictor(restore_from, options,
                                                                output_stride, reference, log)
        what = options.describe()
    class_names, class_colors = class_names_of(run_config), class_colors_of(run_config)
    check_records_fit_the_run(data_dir, split_name, files, run_config)
    if cityscapes_dir:
        label_ids = 'cityscapes'
    table = label_id_table(label_ids, run_config) if label_ids else None
    if tflite_model:
        predictor = TFLitePredictor(
            tflite_model, preprocessing=variants.get(run_config.variant_name).preprocessing)
        if predictor.num_classes != run_config.num_classes:
            raise ValueError(f'{tflite_model} has {predictor.num_classes} classes, the run '
                             f'{run_config.num_classes}')
        prefix, what = os.path.abspath(tflite_model), f'canvas {predictor.canvas_size}'
    log(f'Evaluating {prefix} (step {step}) on {split_name}: output stride '
        f'{run_config.output_stride}, {what}')
    image_scores = (report_lib.ImageScores(run_config.num_classes, run_config.ignore_label,
                                           preprocessing=predictor.preprocessing)
                    if report_dir else None)
    image_ids = []

    def on_prediction(image_id, *arrays):
        image_ids.append(image_id)
        if image_scores is not None:
            image_scores(image_id, *arrays)

    with contextlib.ExitStack() as stack:
        if cityscapes_dir and not save_predictions_dir:
            save_predictions_dir = stack.enter_context(
                tempfile.TemporaryDirectory(prefix='deeplab-cityscapes-predictions-'))
        result = evaluate_dataset(predictor, input_pipeline.eval_dataset(
                                      files, preprocessing=predictor.preprocessing),
                                  run_config.num_classes, run_config.ignore_label,
                                  save_predictions_dir=save_predictions_dir, progress=progress,
                                  max_images=max_images, on_prediction=on_prediction,
                                  num_images=tfrecord.count_records(files) if progress else None,
                                  class_colors=class_colors, label_ids=table)
        official = (cityscapes_eval.official_evaluation(save_predictions_dir, cityscapes_dir,
                                                         split_name, image_ids)
                    if cityscapes_dir else None)
    extra = {'cityscapes_official': official} if official else {}
    report = result_to_json_dict(result, class_names, **options.to_json_dict(),
                                 output_stride=run_config.output_stride, checkpoint=prefix,
                                 global_step=step, split=split_name, **extra)
    log(metrics.format_table(
        {'per_class_iou': [float('nan') if v is None else v for v in result['per_class_iou']],
         'miou': result['miou'], 'pixel_accuracy': result['pixel_accuracy']}, class_names))
    log(metrics.format_confusions(result['most_confused'], class_names))
    if official:
        agree = abs(official['miou'] - result['miou']) < 1e-9
        log(f"Cityscapes' own evaluation (cityscapesscripts) of the {len(image_ids)} label-id "
            f"PNGs: mIoU {100 * official['miou']:.2f}; this evaluation: "
            f"{100 * result['miou']:.2f}"
            + ('' if agree else ' -- they DISAGREE, please report it'))
    if output_json:
        os.makedirs(os.path.dirname(os.path.abspath(output_json)), exist_ok=True)
        write_json_atomic(output_json, report)
    if report_dir:
        index = report_lib.write_report(report_dir, report, class_names, image_scores,
                                        title=f'DeepLabV3 on {split_name}',
                                        class_colors=class_colors)
        log(f'Report: {index}')
    return report


def check_records_fit_the_run(data_dir, split_name, files, run_config):
    """Refuses records whose description (dataset.json) has other classes than the run, and
    shards changed since conversion. Records without a description are checked label by label
    during the evaluation (`evaluator.check_label_values`).

    Raises:
        ValueError: naming the dataset and both class counts, or the changed shard.
    """
    dataset = description.read_description(data_dir)
    if dataset is None:
        return
    description.check_split(dataset, data_dir, split_name, files)
    if dataset.num_classes != run_config.num_classes:
        raise ValueError(f'{data_dir} holds {dataset.name} with {dataset.num_classes} classes; '
                         f'the run was trained with {run_config.num_classes}')
