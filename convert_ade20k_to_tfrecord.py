"""Converts one ADE20K SceneParsing split to sharded TFRecords of its 150 classes.

Annotation 0 ("other") becomes 255 (ignored) and class k (1..150) becomes k - 1, as in the
reference DeepLab. Every image/annotation pair is validated before anything is written; a bad
entry refuses the run (exit status 1, every bad entry listed) unless --skip-invalid is given.

    .venv/bin/python convert_ade20k_to_tfrecord.py --ade20k-dir ADEChallengeData2016 \\
        --split-name training --output-dir data/ade20k_records
    .venv/bin/python convert_ade20k_to_tfrecord.py --ade20k-dir ADEChallengeData2016 \\
        --split-name validation --output-dir data/ade20k_records

--ade20k-dir is ADEChallengeData2016/ (ADEChallengeData2016.zip from
http://sceneparsing.csail.mit.edu/), holding images/ and annotations/.
"""
import sys

import config as config_lib
import converters
from libs.datasets import ade20k
from libs.utils.filesystem import one_line_errors


def parse_args(argv=None):
    parser = config_lib.script_parser(__doc__)
    parser.add_argument('--ade20k-dir', required=True, help='the ADEChallengeData2016 folder')
    parser.add_argument('--split-name', default='training', choices=sorted(ade20k.SPLIT_SIZES),
                        help='the split to convert')
    converters.add_script_args(parser)
    return converters.parse_script_args(parser, argv)


@one_line_errors
def main(argv=None):
    args = parse_args(argv)
    return converters.run_split_script(ade20k.convert_split, args.ade20k_dir, args, 'ADE20K',
                                       ade20k.SPLIT_SIZES)


if __name__ == '__main__':
    sys.exit(main())
