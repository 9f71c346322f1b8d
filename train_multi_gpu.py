"""Train DeepLabV3 synchronously on several GPUs of one machine (MirroredStrategy).

    .venv/bin/python train_multi_gpu.py --num-gpus 4 --batch-size 16 --data-dir data/records \\
        --split-name train_aug --snapshot-dir runs/stage1

--batch-size is the global batch: each GPU takes batch-size / num-gpus images. Batch norm
statistics are all-reduced across the GPUs (4 GPUs x 4 images normalise like one batch of 16)
unless --no-sync-bn. Without GPUs, --cpu-devices N runs the same code on N logical CPU devices.
Re-running the same command resumes from the snapshot dir's latest checkpoint.
"""
import argparse
import sys

import config as config_lib
from libs.utils.filesystem import one_line_errors


def parse_args(argv=None):
    parser = config_lib.build_train_parser(__doc__)
    g = parser.add_argument_group('replicas')
    devices = g.add_mutually_exclusive_group()
    devices.add_argument('--num-gpus', type=config_lib.positive_int, default=None,
                         help='GPUs to train on (default: every visible GPU)')
    devices.add_argument('--cpu-devices', type=config_lib.positive_int, default=None,
                         help='split the CPU into N logical devices and train on those instead')
    g.add_argument('--sync-bn', action=argparse.BooleanOptionalAction,
                   default=config_lib.TrainConfig.sync_bn,
                   help='all-reduce batch-norm statistics across replicas')
    args = config_lib.parse_train_args(parser, argv)
    replicas = args.cpu_devices or args.num_gpus
    if replicas and args.batch_size % replicas:
        parser.error(f'--batch-size {args.batch_size} does not split evenly over {replicas} '
                     f'replicas; use a multiple of {replicas}')
    return args


@one_line_errors
def main(argv=None):
    args = parse_args(argv)
    import tensorflow as tf

    from libs.training import runner
    from libs.training.loop import make_deterministic
    from libs.training.mirrored import mirrored_strategy
    if args.deterministic:
        make_deterministic()  # before the strategy initialises TensorFlow
    try:
        strategy = mirrored_strategy(num_gpus=args.num_gpus, cpu_devices=args.cpu_devices)
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    devices = strategy.extended.worker_devices
    print(f'Training on {len(devices)} replicas ({", ".join(devices)}), batch norm '
          f'{"synchronised" if args.sync_bn else "per replica"} (TensorFlow {tf.__version__})',
          flush=True)
    return runner.run_training(config_lib.config_from_args(args), strategy=strategy)


if __name__ == '__main__':
    sys.exit(main())
