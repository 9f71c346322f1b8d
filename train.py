"""Train DeepLabV3 on one device: the GPU if one is visible, else the CPU.

    .venv/bin/python train.py --data-dir data/records --split-name train_aug \\
        --snapshot-dir runs/stage1

Re-running the same command resumes from the snapshot dir's latest checkpoint. One run at a time
holds a snapshot dir: a second one refuses, naming the first. Ctrl-C stops the run, saying which
checkpoint it will resume from.
"""
import sys

import config as config_lib
from libs.utils.filesystem import one_line_errors


@one_line_errors
def main(argv=None):
    args = config_lib.parse_train_args(config_lib.build_train_parser(__doc__), argv)
    import tensorflow as tf

    from libs.training import runner
    gpus = tf.config.list_physical_devices('GPU')
    print(f'Training on {"GPU " + gpus[0].name if gpus else "CPU"} '
          f'(TensorFlow {tf.__version__})', flush=True)
    return runner.run_training(config_lib.config_from_args(args))


if __name__ == '__main__':
    sys.exit(main())
