"""Export a trained DeepLabV3 as a SavedModel for serving (encoded image bytes in, class map out).

    .venv/bin/python export.py --restore-from runs/stage1 --output-dir models/deeplab/1 \\
        --output-stride 8

Signature `serving_default`: input `image_bytes` (scalar string: an encoded JPEG or PNG), outputs
`semantic` (int32 [H, W]) and `probabilities` (float32 [H, W, C]) at the image's own size. Batch
norm is folded into the convolutions. EXIF orientation is not applied inside the SavedModel. See
docs/serving.md for TensorFlow Serving. The architecture is read from the run's config.json.
"""
import sys

import config as config_lib
from libs.utils.filesystem import one_line_errors


def parse_args(argv=None):
    p = config_lib.script_parser(__doc__)
    config_lib.add_inference_args(p)
    p.add_argument('--output-dir', required=True,
                   help='the SavedModel folder to create (must not exist, or be empty)')
    args = p.parse_args(argv)
    config_lib.check_outputs(p, args, folders=('output_dir',))
    return args


@one_line_errors
def main(argv=None):
    args = parse_args(argv)
    from libs.evaluation import serving
    from libs.evaluation.prediction import class_names_for
    from libs.runs.checkpoints import load_trained_model
    try:
        model, run_config, prefix, step = load_trained_model(args.restore_from,
                                                             args.output_stride)
        path = serving.export_saved_model(
            model, args.output_dir, class_names_for(run_config.num_classes),
            output_stride=run_config.output_stride, scales=args.scales, flip=args.flip)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(f'Exported {prefix} (step {step}) to {path}: output stride '
          f'{run_config.output_stride}, scales {list(args.scales)}, flip {args.flip}, '
          'batch norm folded')
    return 0


if __name__ == '__main__':
    sys.exit(main())
