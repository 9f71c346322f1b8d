"""Evaluate a trained DeepLabV3 on a split: full resolution, optional multi-scale and flip.

    .venv/bin/python evaluate.py --restore-from runs/stage1 --data-dir data/records \\
        --split-name val --output-stride 8 --scales 0.5,0.75,1.0,1.25,1.5,1.75 --flip \\
        --output-json val.json --report val_report

A Cityscapes run scored by Cityscapes' own script too (both mIoUs are printed; they agree), with
the label-id PNGs the benchmark server takes kept in cs_val:

    .venv/bin/python evaluate.py --restore-from runs/cityscapes --data-dir data/cityscapes \\
        --split-name val --cityscapes-eval /data/cityscapes --save-predictions cs_val

The architecture is read from the run's config.json. Records holding a label the model has no
class for are refused. Every output is checked for writability before the evaluation starts, and
--output-json may not be one of the inputs (a shard, the run's config.json).
"""
import glob
import os
import sys

import config as config_lib
from libs.utils import filesystem
from libs.utils.frozen_weights import assume_frozen_weights


def parse_args(argv=None):
    p = config_lib.script_parser(__doc__)
    config_lib.add_inference_args(p)
    p.add_argument('--data-dir', default=config_lib.TrainConfig.data_dir,
                   help='folder of TFRecord shards')
    p.add_argument('--split-name', default='val', help='split to evaluate')
    p.add_argument('--output-json', default=None, help='write the metrics here')
    p.add_argument('--save-predictions', default=None, metavar='DIR',
                   help='write one VOC palette PNG per image here')
    p.add_argument('--max-images', type=config_lib.positive_int, default=None,
                   help='evaluate the first N images only')
    p.add_argument('--report', default=None, metavar='DIR',
                   help='write an HTML report here: confusion matrix, per-class IoU, worst and '
                   'best images')
    p.add_argument('--tflite', default=None, metavar='FILE',
                   help="evaluate this TFLite export of the run (export.py --format tflite: its "
                        "folder or its model.tflite) instead of the checkpoint's network")
    p.add_argument('--label-ids', choices=('cityscapes',), default=None,
                   help="--save-predictions writes the dataset's own label ids (greyscale PNGs, "
                        "as Cityscapes' evaluation script and benchmark server read them) instead "
                        'of palette class indices; the run must have been trained on it')
    p.add_argument('--cityscapes-eval', default=None, metavar='CITYSCAPES_DIR',
                   help="also score with Cityscapes' own script (cityscapesscripts) against "
                        'CITYSCAPES_DIR/gtFine/<--split-name>; implies --label-ids cityscapes')
    args = p.parse_args(argv)
    config_lib.check_inference_args(p, args)
    if args.label_ids and not (args.save_predictions or args.cityscapes_eval):
        p.error('--label-ids needs --save-predictions DIR (where the label-id PNGs go)')
    if args.cityscapes_eval:
        gt_dir = os.path.join(args.cityscapes_eval, 'gtFine', args.split_name)
        if not os.path.isdir(gt_dir):
            p.error(f'--cityscapes-eval {args.cityscapes_eval}: {gt_dir} not found (give the '
                    'Cityscapes folder holding gtFine/)')
        args.label_ids = 'cityscapes'
    if args.label_ids:
        from libs.evaluation.prediction import check_label_ids
        try:
            check_label_ids(args.label_ids, args.restore_from)
        except (ValueError, FileNotFoundError) as e:
            p.error(f'--label-ids {args.label_ids}: {e}')
    if args.tflite and (tuple(args.scales) != (1.0,) or args.flip or args.crop_size
                        or args.precision != 'float32' or args.output_stride):
        p.error('--tflite runs the exported model as it is: no --scales, --flip, --crop-size, '
                '--precision or --output-stride')
    if args.tflite and not os.path.exists(args.tflite):
        p.error(f'--tflite {args.tflite}: no such file or folder')
    config_lib.check_outputs(p, args, folders=('save_predictions', 'report'),
                             files=('output_json',))
    if args.output_json:
        inputs = glob.glob(os.path.join(glob.escape(args.data_dir), '*.tfrecord')) + [
            os.path.join(config_lib.run_dir_of(args.restore_from), config_lib.CONFIG_FILE)]
        try:
            filesystem.check_not_input([args.output_json], inputs, '--output-json')
        except ValueError as e:
            p.error(str(e))
    return args


@filesystem.one_line_errors
def main(argv=None):
    args = parse_args(argv)
    assume_frozen_weights()  # before TensorFlow starts: this process only infers
    from libs.evaluation.inference import InferenceOptions
    from libs.evaluation.run import evaluate_checkpoint
    try:
        evaluate_checkpoint(args.restore_from, args.data_dir, args.split_name,
                            output_stride=args.output_stride,
                            options=InferenceOptions.from_args(args),
                            output_json=args.output_json,
                            save_predictions_dir=args.save_predictions,
                            max_images=args.max_images, report_dir=args.report,
                            tflite_model=args.tflite, label_ids=args.label_ids,
                            cityscapes_dir=args.cityscapes_eval,
                            reference=config_lib.reference_hints(args))
    except (ValueError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
