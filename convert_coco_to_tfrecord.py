"""Converts MS-COCO instances to VOC-class TFRecords (the same schema as the VOC splits).

The 20 COCO categories that are VOC classes (matched by name: airplane -> aeroplane, couch -> sofa,
tv -> tvmonitor, ...) keep their VOC index, every other category is background (0), crowd
regions are 255 (ignored), and where instances overlap the one drawn later in the JSON wins.
Images with fewer than --min-voc-pixels VOC-class pixels are left out. Every image and
annotation is validated before anything is written; a bad one refuses the run (exit status 1,
every bad image listed) unless --skip-invalid is given.

    .venv/bin/python convert_coco_to_tfrecord.py \\
        --annotation-file coco/annotations/instances_train2017.json \\
        --image-dir coco/train2017 --split-name coco_train --output-dir data/records
    .venv/bin/python train.py --data-dir data/records --split-name coco_train ...
"""
import sys

import config as config_lib
import converters
from libs.datasets import coco
from libs.utils.filesystem import one_line_errors


def parse_args(argv=None):
    parser = config_lib.script_parser(__doc__)
    parser.add_argument('--annotation-file', required=True,
                        help='COCO instances JSON, e.g. annotations/instances_train2017.json')
    parser.add_argument('--image-dir', required=True,
                        help="the images folder the JSON's file_names are in, e.g. train2017")
    parser.add_argument('--split-name', default='coco_train',
                        help='names the shards (and train.py --split-name)')
    parser.add_argument('--min-voc-pixels', type=config_lib.non_negative_int,
                        default=coco.DEFAULT_MIN_VOC_PIXELS,
                        help="keep images with at least this many VOC-class pixels (the paper's "
                        '1000-pixel threshold); 0 keeps all')
    converters.add_script_args(parser, entries='images')
    return converters.parse_script_args(parser, argv)


@one_line_errors
def main(argv=None):
    args = parse_args(argv)
    result, seconds, status = converters.run_for_script(
        lambda: coco.convert_coco(
            args.annotation_file, args.image_dir, args.split_name, args.output_dir,
            min_voc_pixels=args.min_voc_pixels, num_shards=args.num_shards,
            num_workers=args.num_workers, skip_invalid=args.skip_invalid),
        args.output_dir, 'the valid images only')
    if result is None:
        return status
    print(f'split {result.split}: {result.num_images} images written in '
          f'{len(result.shards)} shards to {result.output_dir}; '
          f'{len(result.dropped)} dropped (fewer than {args.min_voc_pixels} VOC-class pixels), '
          f'{len({p.image_id for p in result.skipped})} invalid skipped, '
          f'{len(result.warnings)} warnings, {seconds:.1f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
