"""Writes the embedded demo dataset (synthetic photos) to a folder, in a dataset's layout.

--layout voc (the default) writes the VOC 2012 layout; cityscapes, ade20k and folder write the
same photos in those datasets' layouts, so that every converter runs without a download:

    .venv/bin/python make_sample_dataset.py --output-dir data/sample_voc
    .venv/bin/python convert_voc_to_tfrecord.py --voc-dir data/sample_voc --split-name train \\
        --output-dir data/sample_tfrecords
    .venv/bin/python make_sample_dataset.py --layout cityscapes --output-dir data/sample_cityscapes
    .venv/bin/python convert_cityscapes_to_tfrecord.py --cityscapes-dir data/sample_cityscapes \\
        --split-name train --output-dir data/sample_cityscapes_records
    .venv/bin/python make_sample_dataset.py --layout folder --output-dir data/sample_folder
    .venv/bin/python convert_folder_to_tfrecord.py --image-dir data/sample_folder/images \\
        --mask-dir data/sample_folder/masks --classes data/sample_folder/classes.txt \\
        --output-dir data/sample_folder_records
"""
import sys
import time

import config as config_lib
from libs.datasets import sample
from libs.utils.filesystem import one_line_errors


def parse_args(argv=None):
    parser = config_lib.script_parser(__doc__)
    parser.add_argument('--output-dir', required=True,
                        help='folder to write (plays the role of VOCdevkit/VOC2012, the '
                        'Cityscapes folder, ADEChallengeData2016 or your own folder)')
    parser.add_argument('--layout', choices=tuple(sample.LAYOUTS), default='voc',
                        help="the dataset whose folder layout and label values to write")
    parser.add_argument('--rgb-masks', action='store_true',
                        help='--layout folder: masks as RGB colours of classes.txt instead of '
                        'palette PNGs of class indices')
    parser.add_argument('--num-train', type=config_lib.positive_int, default=300,
                        help='images in the train split')
    parser.add_argument('--num-val', type=config_lib.positive_int, default=40,
                        help='images in the val split (and in the Cityscapes test split)')
    parser.add_argument('--seed', type=config_lib.non_negative_int, default=0,
                        help='seed of the synthetic photos: the same seed writes the same files')
    args = parser.parse_args(argv)
    if args.rgb_masks and args.layout != 'folder':
        parser.error('--rgb-masks is for --layout folder')
    config_lib.check_outputs(parser, args, folders=('output_dir',))
    return args


@one_line_errors
def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    summary = sample.write_sample_dataset(args.output_dir, num_train=args.num_train,
                                          num_val=args.num_val, seed=args.seed,
                                          layout=args.layout, rgb_masks=args.rgb_masks)
    objects = ', '.join(f'{name} {count}' for name, count in summary['objects'].items())
    splits = ' + '.join(f'{len(ids)} {split}' for split, ids in summary['splits'].items()
                        if split != 'trainval')
    print(f'wrote {splits} images ({args.layout} layout) to {args.output_dir} in '
          f'{time.time() - start:.1f} s (objects: {objects})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
