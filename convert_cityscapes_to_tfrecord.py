"""Converts one Cityscapes split (fine annotations) to sharded TFRecords of the 19 train ids.

Label ids become train ids through the dataset's official label table (the `cityscapesscripts`
package); every id without a train id becomes 255 (ignored). `test` has no labels: it is written
with labels of 255 only and marked unlabelled, so training and evaluation refuse it (predict.py
reads its images directly; export.py can calibrate on it). Every image/label pair is validated
before anything is written; a bad entry refuses the run (exit status 1, every bad entry listed)
unless --skip-invalid is given.

    .venv/bin/python convert_cityscapes_to_tfrecord.py --cityscapes-dir cityscapes \\
        --split-name train --output-dir data/cityscapes_records
    .venv/bin/python convert_cityscapes_to_tfrecord.py --cityscapes-dir cityscapes \\
        --split-name val --output-dir data/cityscapes_records

--cityscapes-dir holds leftImg8bit/ and gtFine/ (leftImg8bit_trainvaltest.zip and
gtFine_trainvaltest.zip from https://www.cityscapes-dataset.com/, unpacked in one folder).
"""
import sys

import config as config_lib
import converters
from libs.datasets import cityscapes
from libs.utils.filesystem import one_line_errors


def parse_args(argv=None):
    parser = config_lib.script_parser(__doc__)
    parser.add_argument('--cityscapes-dir', required=True,
                        help='the folder holding leftImg8bit/ and gtFine/')
    parser.add_argument('--split-name', default='train', choices=sorted(cityscapes.SPLIT_SIZES),
                        help='the split to convert (test: unlabelled, for prediction only)')
    converters.add_script_args(parser)
    return converters.parse_script_args(parser, argv)


@one_line_errors
def main(argv=None):
    args = parse_args(argv)
    unlabelled = args.split_name in cityscapes.UNLABELLED_SPLITS
    return converters.run_split_script(cityscapes.convert_split, args.cityscapes_dir, args,
                                       'Cityscapes', cityscapes.SPLIT_SIZES,
                                       ', unlabelled' if unlabelled else '')


if __name__ == '__main__':
    sys.exit(main())
