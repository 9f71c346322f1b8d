"""What the convert_*_to_tfrecord.py scripts share: their common flags, running a conversion with
refusals turned into one line and an exit status, and the summary line of a split written."""
import logging
import os
import sys
import time

import config as config_lib
from libs.datasets.conversion import ConversionError
from libs.utils import lock


def add_script_args(parser, entries='pairs'):
    """Adds the flags every converter script has: --output-dir, --num-shards, --num-workers,
    --skip-invalid.

    Args:
        parser: the script's argparse parser.
        entries: what --skip-invalid leaves out, for its help, e.g. 'pairs' or 'images'.
    """
    parser.add_argument('--output-dir', required=True, help='folder for the shards')
    parser.add_argument('--num-shards', type=config_lib.positive_int,
                        help='shards to write (per split); default 4 up to 2000 images, else 10')
    parser.add_argument('--num-workers', type=config_lib.positive_int,
                        default=os.cpu_count() or 1,
                        help='validation/encoding processes (default: all cores)')
    parser.add_argument('--skip-invalid', action='store_true',
                        help=f'write the valid {entries} and list the skipped ones, instead of '
                        'refusing the whole run')


def parse_script_args(parser, argv):
    """Parses a converter script's flags and checks that --output-dir can be written (argparse's
    one-line error otherwise)."""
    args = parser.parse_args(argv)
    config_lib.check_outputs(parser, args, folders=('output_dir',))
    return args


def summary_line(result, seconds, known=''):
    """The line a converter script prints for a split written, e.g. 'split val: 500 images
    (Cityscapes val has 500), 2 shards written to DIR, 0 invalid entries skipped, ...'.

    Args:
        result: a `conversion.ConversionResult`.
        seconds: the time taken, or None to leave it out.
        known: what the split should hold, put in parentheses after the count, or ''.
    """
    return (f'split {result.split}: {result.num_images} images{f" ({known})" if known else ""}, '
            f'{len(result.shards)} shards written to {result.output_dir}, '
            f'{len({p.image_id for p in result.skipped})} invalid entries skipped, '
            f'{len(result.warnings)} warnings' + ('' if seconds is None else f', {seconds:.1f} s'))


def run_split_script(convert_split, dataset_dir, args, dataset_title, split_sizes, note=''):
    """The `main` of a script that converts one split of a dataset's own layout (Cityscapes,
    ADE20K): runs `convert_split(dataset_dir, args.split_name, args.output_dir, ...)` with the
    `add_script_args` flags and prints `summary_line`.

    Args:
        note: appended to the expected count, e.g. ', unlabelled'.

    Returns:
        The exit status (see `run_for_script`).
    """
    result, seconds, status = run_for_script(
        lambda: convert_split(dataset_dir, args.split_name, args.output_dir,
                              num_shards=args.num_shards, num_workers=args.num_workers,
                              skip_invalid=args.skip_invalid),
        args.output_dir, 'the valid pairs only')
    if result is None:
        return status
    print(summary_line(result, seconds, f'{dataset_title} {result.split} has '
                                        f'{split_sizes[result.split]}{note}'))
    return 0


def run_for_script(convert, output_dir, skip_hint):
    """Runs a converter script's `convert()`, turning refusals into one message on stderr.

    Args:
        convert: a callable returning a `conversion.ConversionResult` (or the COCO converter's result).
        output_dir: the shards' folder, named when the run is interrupted.
        skip_hint: what `--skip-invalid` writes instead, e.g. 'the valid pairs only'.
    Returns:
        (result, seconds taken, exit status): the status is 0 with a result; 1 (refused input:
        a `ConversionError`, a missing file, a bad value, the split being written by another
        conversion) or 130 (interrupted) with None.
    """
    logging.basicConfig(level=logging.INFO, format='%(levelname)s: %(message)s')
    start = time.time()
    try:
        result = convert()
    except ConversionError as e:
        hint = f'\n(--skip-invalid writes {skip_hint})' if e.problems else ''
        print(f'error: {e}{hint}', file=sys.stderr)
        return None, time.time() - start, 1
    except (FileNotFoundError, ValueError, lock.FolderInUse) as e:
        print(f'error: {e}', file=sys.stderr)
        return None, time.time() - start, 1
    except KeyboardInterrupt:
        print(f'interrupted; no shard was written to {output_dir}', file=sys.stderr)
        return None, time.time() - start, 130
    return result, time.time() - start, 0
