"""Converts a folder of images and masks (your own dataset) to sharded TFRecords.

Images (`<stem>.jpg|.jpeg|.png`) and masks (`<stem>.png`) are matched by stem; an image without a
mask or a mask without an image is named and refused (left out with --skip-invalid). Masks hold
class indices as palette or greyscale PNGs, 255 = ignore; masks saved as RGB colours of the
class list are mapped back, with a warning (ignored pixels: colour 224,224,192). A mask value
that is neither a class index nor 255 is refused, naming the file and the value.

The class list has one class a line, in index order: `name`, `name r,g,b` or `name #rrggbb`
(colours for every class or for none; none: VOC's palette). Splits: `--split-list NAME=FILE`
(repeatable; FILE lists stems, one a line, and the split is written as NAME) or
`--split-ratio train=0.9,val=0.1 --seed 0` (the default), which shuffles the stems with the
seed and writes the splits named in the ratio. Every split is validated before any is written,
and the splits appear together or not at all (a failure while writing one leaves none).

    .venv/bin/python convert_folder_to_tfrecord.py --image-dir mydata/images \\
        --mask-dir mydata/masks --classes mydata/classes.txt --output-dir data/my_records
    .venv/bin/python convert_folder_to_tfrecord.py --image-dir mydata/images \\
        --mask-dir mydata/masks --classes mydata/classes.txt --output-dir data/my_records \\
        --split-list train=mydata/train.txt --split-list val=mydata/val.txt
"""
import re
import sys

import config as config_lib
import converters
from libs.datasets import folder
from libs.utils.filesystem import one_line_errors

_SPLIT_NAME = re.compile(r'^[A-Za-z0-9_]+$')


def _split_name(name):
    """A split name becomes shard file names: letters, digits and underscores only."""
    if not _SPLIT_NAME.match(name):
        raise ValueError(f'split name {name!r}: use letters, digits and _ only')
    return name


def split_list(text):
    """argparse type: NAME=FILE."""
    import argparse
    name, sep, path = text.partition('=')
    if not sep or not path:
        raise argparse.ArgumentTypeError(f'{text!r} is not NAME=FILE')
    try:
        return _split_name(name), path
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def split_ratio(text):
    """argparse type: NAME=FRACTION,... summing to 1, e.g. train=0.9,val=0.1."""
    import argparse
    ratios = {}
    for part in text.split(','):
        name, sep, value = part.partition('=')
        try:
            ratios[_split_name(name)] = float(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(
                f'{text!r}: {e if sep else "expected NAME=FRACTION,..."}') from None
    if not all(0 < v <= 1 for v in ratios.values()) or not abs(sum(ratios.values()) - 1) <= 1e-6:
        raise argparse.ArgumentTypeError(f'{text!r}: fractions must be positive and sum to 1')
    return ratios


def parse_args(argv=None):
    parser = config_lib.script_parser(__doc__)
    parser.add_argument('--image-dir', required=True, help='folder of the images')
    parser.add_argument('--mask-dir', required=True, help='folder of the masks (.png)')
    parser.add_argument('--classes', required=True,
                        help='class list: one `name [r,g,b | #rrggbb]` a line, in index order')
    splits = parser.add_mutually_exclusive_group()
    splits.add_argument('--split-list', type=split_list, action='append', metavar='NAME=FILE',
                        help='a split and its file of stems (repeat for each split)')
    splits.add_argument('--split-ratio', type=split_ratio, default={'train': 0.9, 'val': 0.1},
                        help='splits and their fractions of the images, e.g. train=0.9,val=0.1')
    parser.add_argument('--seed', type=config_lib.non_negative_int, default=0,
                        help='shuffles the images before --split-ratio cuts them')
    parser.add_argument('--dataset-name', default='custom',
                        help="the dataset's name in dataset.json (and the runs)")
    converters.add_script_args(parser)
    args = converters.parse_script_args(parser, argv)
    if args.split_list and len(dict(args.split_list)) != len(args.split_list):
        parser.error('--split-list names a split twice')
    return args


@one_line_errors
def main(argv=None):
    args = parse_args(argv)
    done, seconds, status = converters.run_for_script(
        lambda: folder.convert_folder(
            args.image_dir, args.mask_dir, args.classes, args.output_dir,
            split_files=dict(args.split_list) if args.split_list else None,
            split_ratios=None if args.split_list else args.split_ratio, seed=args.seed,
            name=args.dataset_name, num_shards=args.num_shards, num_workers=args.num_workers,
            skip_invalid=args.skip_invalid),
        args.output_dir, 'the matched, valid pairs only')
    if done is None:
        return status
    for result in done.splits.values():
        print(converters.summary_line(result, None))
    print(f'{len(done.unmatched)} unmatched or unlisted files left out, {seconds:.1f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
