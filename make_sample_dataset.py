"""Writes the embedded demo dataset (synthetic photos, VOC 2012 layout) to a folder.

    .venv/bin/python make_sample_dataset.py --output-dir data/sample_voc
    .venv/bin/python convert_voc_to_tfrecord.py --voc-dir data/sample_voc --split-name train \\
        --output-dir data/sample_tfrecords
"""
import sys
import time

import config as config_lib
from libs.datasets import sample
from libs.utils.filesystem import one_line_errors


def parse_args(argv=None):
    parser = config_lib.script_parser(__doc__)
    parser.add_argument('--output-dir', required=True,
                        help='folder to write (plays the role of VOCdevkit/VOC2012)')
    parser.add_argument('--num-train', type=config_lib.positive_int, default=300,
                        help='images in the train split')
    parser.add_argument('--num-val', type=config_lib.positive_int, default=40,
                        help='images in the val split')
    parser.add_argument('--seed', type=config_lib.non_negative_int, default=0,
                        help='seed of the synthetic photos: the same seed writes the same files')
    args = parser.parse_args(argv)
    config_lib.check_outputs(parser, args, folders=('output_dir',))
    return args


@one_line_errors
def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    summary = sample.write_sample_dataset(args.output_dir, num_train=args.num_train,
                                          num_val=args.num_val, seed=args.seed)
    objects = ', '.join(f'{name} {count}' for name, count in summary['objects'].items())
    print(f'wrote {summary["num_train"]} train + {summary["num_val"]} val images to '
          f'{args.output_dir} in {time.time() - start:.1f} s (objects: {objects})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
