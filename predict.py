"""Predict class maps of images with a trained DeepLabV3.

    .venv/bin/python predict.py --restore-from runs/stage1 --input photos/ \\
        --output-dir predictions --overlay

For each input `<stem>.<ext>` writes `<stem>.png` (class indices as a palette PNG in the colours of
the run's dataset, at the input's own size) and with --overlay `<stem>_overlay.jpg` (the photo
tinted with the classes found, with a legend). --input is one file, a folder (not recursive) or a
quoted glob pattern. EXIF orientation is applied, so outputs are upright, as image viewers show the
photo. With --label-ids cityscapes, `<stem>.png` holds Cityscapes' label ids (greyscale), as its
evaluation script and benchmark server read them: predicting 'leftImg8bit/test/*/*.png' gives
`<city>_<seq>_<frame>_leftImg8bit.png` files ready to zip and submit. The architecture is read
from the run's config.json. An output that would overwrite an input is refused before anything
is written. An unreadable file is reported and skipped; the exit
status is then 1.
"""
import sys

import config as config_lib
from libs.utils import filesystem


def parse_args(argv=None):
    """The flags, the input files and their output files, all checked before TensorFlow starts.

    Returns:
        (args, input paths).
    """
    from libs.utils import image_io
    p = config_lib.script_parser(__doc__)
    config_lib.add_inference_args(p)
    p.add_argument('--input', required=True, help='an image file, a folder, or a glob pattern')
    p.add_argument('--output-dir', required=True, help='where the PNGs (and overlays) go')
    p.add_argument('--overlay', action='store_true',
                   help='also write <stem>_overlay.jpg: the photo tinted, with a legend')
    p.add_argument('--label-ids', choices=('cityscapes',), default=None,
                   help="write the dataset's own label ids (greyscale PNGs, as Cityscapes' "
                        'evaluation script and benchmark server read them) instead of palette '
                        'class indices; the run must have been trained on it')
    args = p.parse_args(argv)
    config_lib.check_inference_args(p, args)
    config_lib.check_outputs(p, args, folders=('output_dir',))
    if args.label_ids:
        from libs.evaluation.prediction import check_label_ids
        try:
            check_label_ids(args.label_ids, args.restore_from)
        except (ValueError, FileNotFoundError) as e:
            p.error(f'--label-ids {args.label_ids}: {e}')
    try:
        paths = image_io.list_images(args.input)
        outputs = [out for path in paths
                   for out in image_io.output_paths(path, args.output_dir, args.overlay)]
        filesystem.check_not_input(outputs, paths, '--output-dir')
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    return args, paths


@filesystem.one_line_errors
def main(argv=None):
    args, paths = parse_args(argv)
    from libs.evaluation import prediction
    from libs.evaluation.inference import InferenceOptions
    from libs.nets.folding import FoldedDeepLabV3
    from libs.runs.checkpoints import load_trained_model
    try:
        model, run_config, prefix, step = load_trained_model(args.restore_from,
                                                             args.output_stride)
        options = InferenceOptions.from_args(args)
        predictor = options.predictor(FoldedDeepLabV3(model), run_config.num_classes,
                                      run_config.output_stride)
    except (ValueError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(f'Predicting {len(paths)} image(s) with {prefix} (step {step}): output stride '
          f'{run_config.output_stride}, {options.describe()}',
          file=sys.stderr)
    failures = prediction.predict_files(
        predictor, paths, args.output_dir, prediction.class_names_of(run_config),
        overlay=args.overlay, class_colors=prediction.class_colors_of(run_config),
        label_ids=(prediction.label_id_table(args.label_ids, run_config) if args.label_ids
                   else None))
    written = len(paths) - len(failures)
    print(f'Wrote {written} prediction(s) to {args.output_dir}', file=sys.stderr)
    if failures:
        print(f'error: {len(failures)} of {len(paths)} image(s) could not be predicted:\n'
              + prediction.format_failures(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
