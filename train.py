"""Train DeepLabV3 on one device: the GPU if one is visible, else the CPU.

    python3 train.py --data-dir data/records --split-name train_aug --snapshot-dir runs/stage1

Re-running the same command resumes from the snapshot dir's latest checkpoint.
"""
import sys

import config as config_lib
from libs.training import runner


def main(argv=None):
    parser = config_lib.build_train_parser(__doc__.strip().splitlines()[0])
    args = parser.parse_args(argv)
    import tensorflow as tf
    gpus = tf.config.list_physical_devices('GPU')
    print(f'Training on {"GPU " + gpus[0].name if gpus else "CPU"} '
          f'(TensorFlow {tf.__version__})', flush=True)
    return runner.run_training(config_lib.config_from_args(args))


if __name__ == '__main__':
    sys.exit(main())
