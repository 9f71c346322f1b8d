"""Export a trained DeepLabV3 for serving (a SavedModel), for devices (TFLite, float or int8) or
for ONNX Runtime (ONNX).

    .venv/bin/python export.py --restore-from runs/stage1 --output-dir models/deeplab/1 \\
        --output-stride 8
    .venv/bin/python export.py --restore-from runs/stage1 --output-dir deeplab_int8 \\
        --format tflite --quantize int8 --canvas-size 513
    .venv/bin/python export.py --restore-from runs/stage1 --output-dir deeplab_onnx --format onnx

SavedModel, signature `serving_default`: input `image_bytes` (scalar string: an encoded JPEG or
PNG), outputs `semantic` (int32 [H, W]) and `probabilities` (float32 [H, W, C]) at the image's own
size, with the inference options given here (scales, flip, sliding windows, precision). EXIF
orientation is not applied inside the SavedModel. See docs/deployment.md for TensorFlow Serving.

TFLite: `model.tflite` and `labels.txt`. Input `image` float32 [1, S, S, 3], RGB pixels 0..255 with
the image at the top left and the rest the mean pixel (S = --canvas-size); output `probabilities`
[1, S, S, C]. int8 is calibrated on --num-calibration-images records of --calibration-split.

ONNX (float32, for ONNX Runtime): `model.onnx` and `labels.txt`. Input `image` uint8 [H, W, 3],
RGB, any size; outputs `semantic` and `probabilities` as the SavedModel's, with the same inference
options (the image is decoded by the client). Converted by tf2onnx.

Batch norm is folded into the convolutions in every format. The architecture is read from the
run's config.json.
"""
import sys

import config as config_lib
from libs.utils.filesystem import one_line_errors
from libs.utils.frozen_weights import assume_frozen_weights


def parse_args(argv=None):
    p = config_lib.script_parser(__doc__)
    config_lib.add_inference_args(p)
    p.add_argument('--output-dir', required=True,
                   help='the folder to create (must not exist, or be empty)')
    p.add_argument('--format', choices=('saved_model', 'tflite', 'onnx'), default='saved_model',
                   help='a SavedModel (any image size, encoded bytes in), TFLite (one canvas) or '
                        'ONNX (any image size, uint8 pixels in)')
    p.add_argument('--quantize', choices=('none', 'float16', 'int8'), default='none',
                   help='TFLite: float32 weights, float16 weights, or int8 weights and '
                        'activations (post-training quantization)')
    p.add_argument('--canvas-size', type=config_lib.positive_int, default=513,
                   help='TFLite: the S x S input, OS*k + 1, the largest image side it takes')
    p.add_argument('--data-dir', default=None,
                   help="TFLite int8: folder of the calibration records; default the run's")
    p.add_argument('--calibration-split', default=None,
                   help="TFLite int8: split whose first images calibrate; default the run's "
                        'training split')
    p.add_argument('--num-calibration-images', type=config_lib.positive_int, default=100,
                   help='TFLite int8: images that calibrate the activation ranges')
    args = p.parse_args(argv)
    config_lib.check_inference_args(p, args)
    if args.format == 'tflite':
        if (tuple(args.scales) != (1.0,) or args.flip or args.crop_size is not None
                or args.precision != 'float32'):
            p.error('--format tflite runs one scale on one canvas: --scales, --flip, '
                    '--crop-size and --precision are for the SavedModel (use --quantize)')
        try:
            output_stride = (args.output_stride
                             or config_lib.load_run_config(args.restore_from).output_stride)
        except FileNotFoundError:
            output_stride = None  # main() names the missing run
        if output_stride and (args.canvas_size - 1) % output_stride:
            larger = (args.canvas_size - 1) // output_stride * output_stride + 1 + output_stride
            p.error(f'--canvas-size {args.canvas_size} is not OS*k + 1 for output stride '
                    f'{output_stride}; e.g. {larger}')
    elif args.quantize != 'none':
        p.error('--quantize is for --format tflite')
    elif args.format == 'onnx' and args.precision != 'float32':
        p.error(f'--format onnx is float32, not --precision {args.precision}')
    config_lib.check_outputs(p, args, folders=('output_dir',))
    return args


def _calibration(args, run_config, preprocessing):
    """The representative dataset of int8 quantization, from the records (see `tflite`)."""
    from libs.datasets import input_pipeline, tfrecord
    from libs.evaluation import tflite
    files = tfrecord.list_shards(args.data_dir or run_config.data_dir,
                                 args.calibration_split or run_config.split_name)
    return lambda: tflite.calibration_canvases(
        input_pipeline.eval_dataset(files, preprocessing=preprocessing), args.canvas_size,
        args.num_calibration_images, preprocessing)


@one_line_errors
def main(argv=None):
    args = parse_args(argv)
    assume_frozen_weights()  # before TensorFlow starts: this process only infers
    from libs.evaluation import onnx_export, serving, tflite
    from libs.evaluation.inference import InferenceOptions
    from libs.evaluation.prediction import class_colors_of, class_names_of
    from libs.runs.checkpoints import load_trained_model
    from libs.utils.lock import FolderInUse
    try:
        model, run_config, prefix, step = load_trained_model(
            args.restore_from, args.output_stride, config_lib.reference_hints(args))
        class_names = class_names_of(run_config)
        if args.format == 'tflite':
            tflite.check_canvas_size(args.canvas_size, run_config.output_stride)
            representative = (_calibration(args, run_config, model.preprocessing) if args.quantize == 'int8'
                              else None)
            path = tflite.export_tflite(model, args.output_dir, class_names, args.canvas_size,
                                        run_config.output_stride, args.quantize, representative)
            what = (f'TFLite, canvas {args.canvas_size}, quantize {args.quantize}')
        elif args.format == 'onnx':
            options = InferenceOptions.from_args(args)
            path = onnx_export.export_onnx(model, args.output_dir, class_names,
                                           output_stride=run_config.output_stride,
                                           options=options)
            what = f'ONNX opset {onnx_export.OPSET}, {options.describe()}'
        else:
            options = InferenceOptions.from_args(args)
            path = serving.export_saved_model(model, args.output_dir, class_names,
                                              output_stride=run_config.output_stride,
                                              options=options,
                                              class_colors=class_colors_of(run_config))
            what = f'SavedModel, {options.describe()}'
    except (ValueError, FileNotFoundError, FileExistsError, FolderInUse) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(f'Exported {prefix} (step {step}) to {path}: output stride '
          f'{run_config.output_stride}, {what}, batch norm folded')
    return 0


if __name__ == '__main__':
    sys.exit(main())
