"""Converts one PASCAL VOC 2012 split to sharded TFRecords (the tensorflow/models deeplab schema).

Every image/label pair is validated before anything is written; a bad entry refuses the run
(exit status 1, every bad entry listed) unless --skip-invalid is given.

    .venv/bin/python convert_voc_to_tfrecord.py --voc-dir VOCdevkit/VOC2012 --split-name train \\
        --output-dir data/tfrecords
    .venv/bin/python convert_voc_to_tfrecord.py --voc-dir VOCdevkit/VOC2012 \\
        --split-name train_aug --label-dir VOCdevkit/VOC2012/SegmentationClassAug \\
        --output-dir data/tfrecords

A conversion killed outright leaves hidden temporary shards; the next conversion of the split
removes them, saying so. Two conversions of one split into one folder at once: the second refuses.

train_aug labels come from SBD (http://home.bharathh.info/pubs/codes/SBD/download.html):
either the commonly distributed PNG conversion `SegmentationClassAug` or SBD's own `cls/*.mat`.
"""
import sys

import config as config_lib
import converters
from libs.datasets import voc, voc_conversion
from libs.utils.filesystem import one_line_errors


def parse_args(argv=None):
    parser = config_lib.script_parser(__doc__)
    parser.add_argument('--voc-dir', required=True, help='the VOCdevkit/VOC2012 folder')
    parser.add_argument('--split-name', default='train', choices=sorted(voc.SPLIT_SIZES),
                        help='the split to convert')
    parser.add_argument('--label-dir', help='class labels (.png, or SBD cls .mat); default '
                        '<voc-dir>/SegmentationClass, or <voc-dir>/SegmentationClassAug for '
                        'train_aug')
    parser.add_argument('--split-file', help='one id a line; default <voc-dir>/ImageSets/'
                        'Segmentation/<split>.txt, or the shipped list for train_aug')
    converters.add_script_args(parser)
    parser.add_argument('--num-classes', type=config_lib.class_count, default=voc.NUM_CLASSES,
                        help='labels may hold 0..num-classes-1 and 255')
    return converters.parse_script_args(parser, argv)


@one_line_errors
def main(argv=None):
    args = parse_args(argv)
    result, seconds, status = converters.run_for_script(
        lambda: voc_conversion.convert_split(
            args.voc_dir, args.split_name, args.output_dir, label_dir=args.label_dir,
            split_file=args.split_file, num_shards=args.num_shards,
            num_workers=args.num_workers, skip_invalid=args.skip_invalid,
            num_classes=args.num_classes),
        args.output_dir, 'the valid pairs only')
    if result is None:
        return status
    print(converters.summary_line(
        result, seconds, f'VOC 2012 {result.split} has {voc.SPLIT_SIZES[result.split]}'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
