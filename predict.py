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

A video (--input clip.mp4, any container OpenCV reads) gives `<stem>.mp4` (--video-codec) of the
same size and frame rate, the frames tinted with the classes (--no-overlay: the colour masks);
Ctrl-C keeps a playable video of the frames done. --input 0 shows camera 0 tinted in a window
until q (needs a display and OpenCV with windows: opencv-python, not -headless).

    .venv/bin/python predict.py --restore-from runs/stage1 --input clip.mp4 --output-dir out
"""
import argparse
import os
import sys

import config as config_lib
from libs.utils import filesystem
from libs.utils.frozen_weights import assume_frozen_weights


def parse_args(argv=None):
    """The flags, the input files and their output files, all checked before TensorFlow starts.

    Returns:
        (args, input paths).
    """
    from libs.utils import image_io
    p = config_lib.script_parser(__doc__)
    config_lib.add_inference_args(p)
    from libs.evaluation import video
    p.add_argument('--input', required=True,
                   help='an image file, a folder, a glob pattern, a video file, or a camera '
                        'index (0)')
    p.add_argument('--output-dir', default=None,
                   help='where the PNGs (and overlays) or the video go (not for a camera)')
    p.add_argument('--overlay', action=argparse.BooleanOptionalAction, default=None,
                   help='images: also write <stem>_overlay.jpg, the photo tinted, with a legend '
                        '(default no); videos and camera: tint the frames, else show the colour '
                        'masks (default yes)')
    p.add_argument('--video-codec', choices=tuple(video.CODECS), default='mp4v',
                   help='codec of the output video: mp4v (.mp4), MJPG (.avi) or FFV1 (.avi, '
                        'lossless)')
    p.add_argument('--label-ids', choices=('cityscapes',), default=None,
                   help="write the dataset's own label ids (greyscale PNGs, as Cityscapes' "
                        'evaluation script and benchmark server read them) instead of palette '
                        'class indices; the run must have been trained on it')
    args = p.parse_args(argv)
    config_lib.check_inference_args(p, args)
    camera = args.input.isdigit()
    if args.output_dir is None and not camera:
        p.error('the following arguments are required: --output-dir')
    config_lib.check_outputs(p, args, folders=('output_dir',))
    if args.label_ids and video.is_video(args.input):
        p.error('--label-ids writes label PNGs of images, not videos')
    if args.label_ids:
        from libs.evaluation.prediction import check_label_ids
        try:
            check_label_ids(args.label_ids, args.restore_from)
        except (ValueError, FileNotFoundError) as e:
            p.error(f'--label-ids {args.label_ids}: {e}')
    if video.is_video(args.input):
        args.overlay = args.overlay is not False
        if camera:
            try:
                video.check_camera(args.input)
            except ValueError as e:
                p.error(str(e))
            return args, []
        try:
            video.open_video(args.input)[0].release()
            filesystem.check_not_input(
                [video.output_path(args.input, args.output_dir, args.video_codec)],
                [args.input], '--output-dir')
        except ValueError as e:
            p.error(str(e))
        return args, [args.input]
    args.overlay = bool(args.overlay)
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
    assume_frozen_weights()  # before TensorFlow starts: this process only infers
    from libs.evaluation import prediction
    from libs.evaluation.inference import InferenceOptions
    options = InferenceOptions.from_args(args)
    try:
        predictor, run_config, prefix, step = prediction.trained_predictor(
            args.restore_from, options, args.output_stride, config_lib.reference_hints(args))
    except (ValueError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    from libs.evaluation import video
    if video.is_video(args.input):
        return predict_video(args, predictor, run_config, prefix, step, options)
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


def predict_video(args, predictor, run_config, prefix, step, options):
    """A video file or a camera (`video.predict_video`, `video.show_camera`); the exit status."""
    from libs.evaluation import prediction, video
    colours = prediction.class_colors_of(run_config)
    source = f'camera {args.input}' if args.input.isdigit() else args.input
    print(f'Predicting {source} with {prefix} (step {step}): output stride '
          f'{run_config.output_stride}, {options.describe()}', file=sys.stderr)
    try:
        if args.input.isdigit():
            video.show_camera(predictor, args.input, colours, overlay=args.overlay)
            return 0
        os.makedirs(args.output_dir, exist_ok=True)
        output = video.output_path(args.input, args.output_dir, args.video_codec)
        result = video.predict_video(predictor, args.input, output, colours,
                                     overlay=args.overlay, codec=args.video_codec,
                                     log=lambda line: print(line, file=sys.stderr))
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    if result.interrupted:
        print(f'interrupted: wrote the {result.frames} frame(s) done of '
              f'{result.total or "?"} to {result.output}', file=sys.stderr)
        return 130
    print(f'Wrote {result.frames} frame(s) to {result.output}', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
