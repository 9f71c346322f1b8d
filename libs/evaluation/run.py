"""Evaluating a training run's checkpoint on a split: what evaluate.py does, callable from code."""
import tensorflow as tf

from libs.datasets import input_pipeline, tfrecord, voc
from libs.evaluation import metrics
from libs.evaluation.evaluator import evaluate_dataset, result_to_json_dict, write_json_atomic
from libs.evaluation.inference import MultiScalePredictor
from libs.training.checkpoints import load_trained_model


def evaluate_checkpoint(restore_from, data_dir, split_name='val', output_stride=None,
                        scales=(1.0,), flip=False, output_json=None, save_predictions_dir=None,
                        max_images=None, progress=True, log=print):
    """Evaluates a run's checkpoint at full resolution and reports per-class IoU and mIoU.

    Args:
        restore_from: a snapshot dir (its latest checkpoint) or a checkpoint prefix in one.
        data_dir: folder of TFRecord shards; `split_name` picks the shards.
        output_stride: overrides the run's (a model trained at OS 16 is evaluated at OS 8 in the
            paper, section 4.1).
        scales, flip: multi-scale and left-right flipped inputs, probabilities averaged.
        output_json: where to write the JSON report (atomically), or None.
        save_predictions_dir: where to write one palette PNG per image, or None.
        max_images: evaluate only the first N images.
        log: where the table goes.
    Returns:
        The JSON report as a dict.
    """
    files = tfrecord.list_shards(data_dir, split_name)
    model, run_config, prefix, step = load_trained_model(restore_from, output_stride)
    class_names = (voc.CLASS_NAMES if run_config.num_classes == voc.NUM_CLASSES
                   else tuple(f'class_{i}' for i in range(run_config.num_classes)))
    log(f'Evaluating {prefix} (step {step}) on {split_name}: output stride '
        f'{run_config.output_stride}, scales {list(scales)}, flip {flip}')
    predictor = MultiScalePredictor(model, run_config.num_classes, run_config.output_stride,
                                    scales=scales, flip=flip)
    result = evaluate_dataset(predictor, input_pipeline.eval_dataset(files),
                              run_config.num_classes, run_config.ignore_label,
                              save_predictions_dir=save_predictions_dir, progress=progress,
                              max_images=max_images)
    report = result_to_json_dict(result, class_names, scales=list(scales), flip=flip,
                                 output_stride=run_config.output_stride, checkpoint=prefix,
                                 global_step=step, split=split_name)
    log(metrics.format_table(
        {'per_class_iou': [float('nan') if v is None else v for v in result['per_class_iou']],
         'miou': result['miou'], 'pixel_accuracy': result['pixel_accuracy']}, class_names))
    if output_json:
        write_json_atomic(output_json, report)
    return report
