"""Writes the embedded demo dataset (synthetic photos, VOC 2012 layout) to a folder.

    python3 make_sample_dataset.py --output-dir data/sample_voc
    python3 convert_voc_to_tfrecord.py --voc-dir data/sample_voc --split-name train \\
        --output-dir data/sample_tfrecords
"""
import argparse
import sys
import time

from libs.datasets import sample


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--output-dir', required=True,
                        help='folder to write (plays the role of VOCdevkit/VOC2012)')
    parser.add_argument('--num-train', type=int, default=300)
    parser.add_argument('--num-val', type=int, default=40)
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args(argv)


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
