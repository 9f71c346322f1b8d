"""Defaults in one place, and the argparse builder the three training scripts share.

`TrainConfig` is the single source of truth of a run: the scripts only override its fields from the
command line, and the resolved config is written to `<snapshot-dir>/config.json`, which evaluate.py,
predict.py and export.py read back so that nobody repeats (or gets wrong) the architecture.
Nothing is parsed at import.
"""
import argparse
import dataclasses
import json
import os
from typing import Optional, Tuple

CONFIG_FILE = 'config.json'
# The fields that fix the network's variables: a checkpoint only fits a model with the same ones.
ARCHITECTURE_FIELDS = ('num_layers', 'num_classes', 'multi_grid')
# The fields a resumed run may change: where the records are, how far the run goes, how it is
# watched and what a fresh start would have loaded. Any other change would make the resumed run
# neither the recorded run nor the new one.
RESUMABLE_CHANGES = ('data_dir', 'num_steps', 'snapshot_dir', 'save_pred_every', 'max_to_keep',
                     'restore_from', 'imagenet', 'deterministic', 'log_every', 'val_split',
                     'val_max_images')


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training run. Defaults are the paper's stage 1 (section 4.1): train_aug, OS 16, batch 16,
    crop 513, 30k steps, lr 0.007 poly with power 0.9, batch norm trained with decay 0.9997."""
    # Data and model.
    data_dir: str = 'data/records'
    split_name: str = 'train_aug'
    num_layers: int = 101
    output_stride: int = 16
    multi_grid: Tuple[int, ...] = (1, 2, 4)
    num_classes: int = 21
    ignore_label: int = 255
    # Input.
    batch_size: int = 16
    input_size: int = 513
    random_scale: bool = True
    min_scale: float = 0.5
    max_scale: float = 2.0
    random_mirror: bool = True
    # Optimisation.
    learning_rate: float = 0.007
    power: float = 0.9
    momentum: float = 0.9
    weight_decay: float = 1e-4
    num_steps: int = 30000
    # Batch norm: trained (statistics updated) unless frozen.
    freeze_bn: bool = False
    bn_decay: float = 0.9997
    sync_bn: bool = True
    # Checkpoints, logs, validation.
    snapshot_dir: str = 'runs/train'
    save_pred_every: int = 1000
    max_to_keep: int = 5
    restore_from: Optional[str] = None
    imagenet: Optional[str] = None
    random_seed: int = 1234
    deterministic: bool = False
    log_every: int = 10
    val_split: Optional[str] = None
    val_max_images: Optional[int] = None

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


def parse_int_tuple(text):
    """'1,2,4' -> (1, 2, 4), for `--multi-grid`."""
    try:
        return tuple(int(t) for t in text.split(',') if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated integers, got {text!r}')


def parse_float_tuple(text):
    """'0.5,0.75,1.0' -> (0.5, 0.75, 1.0), for `--scales`."""
    try:
        return tuple(float(t) for t in text.split(',') if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated numbers, got {text!r}')


def build_train_parser(description):
    """The flags of train.py, train_multi_gpu.py and train_distributed.py (the 2018 repo's names).

    Every default is `TrainConfig`'s; a flag left out keeps it.
    """
    d = TrainConfig()
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group('data and model')
    g.add_argument('--data-dir', default=d.data_dir, help='folder of TFRecord shards')
    g.add_argument('--split-name', default=d.split_name, help='split to train on')
    g.add_argument('--num-layers', type=int, default=d.num_layers, choices=(50, 101, 152))
    g.add_argument('--output-stride', type=int, default=d.output_stride, choices=(8, 16, 32))
    g.add_argument('--multi-grid', type=parse_int_tuple, default=d.multi_grid,
                   help="block4's unit rates, e.g. 1,2,4")
    g.add_argument('--num-classes', type=int, default=d.num_classes)
    g.add_argument('--ignore-label', type=int, default=d.ignore_label)
    g = p.add_argument_group('input')
    g.add_argument('--batch-size', type=int, default=d.batch_size, help='global batch size')
    g.add_argument('--input-size', type=int, default=d.input_size, help='square crop size')
    g.add_argument('--random-scale', action=argparse.BooleanOptionalAction,
                   default=d.random_scale, help='random scale in [--min-scale, --max-scale]')
    g.add_argument('--min-scale', type=float, default=d.min_scale)
    g.add_argument('--max-scale', type=float, default=d.max_scale)
    g.add_argument('--random-mirror', action=argparse.BooleanOptionalAction,
                   default=d.random_mirror)
    g = p.add_argument_group('optimisation')
    g.add_argument('--learning-rate', type=float, default=d.learning_rate)
    g.add_argument('--power', type=float, default=d.power, help='poly learning-rate power')
    g.add_argument('--momentum', type=float, default=d.momentum)
    g.add_argument('--weight-decay', type=float, default=d.weight_decay)
    g.add_argument('--num-steps', type=int, default=d.num_steps)
    g = p.add_argument_group('batch norm')
    bn = g.add_mutually_exclusive_group()
    bn.add_argument('--freeze-bn', dest='freeze_bn', action='store_true', default=d.freeze_bn,
                    help='use the moving statistics and keep gamma/beta fixed')
    bn.add_argument('--fine-tune-bn', dest='freeze_bn', action='store_false',
                    help='train batch norm: batch statistics, moving averages updated (default)')
    g.add_argument('--bn-decay', type=float, default=d.bn_decay)
    g = p.add_argument_group('checkpoints, logs and validation')
    g.add_argument('--snapshot-dir', default=d.snapshot_dir)
    g.add_argument('--save-pred-every', type=int, default=d.save_pred_every,
                   help='checkpoint (and validate) every N steps')
    g.add_argument('--max-to-keep', type=int, default=d.max_to_keep)
    g.add_argument('--restore-from', default=d.restore_from,
                   help="another run's snapshot dir or checkpoint prefix to start from "
                        '(weights only)')
    g.add_argument('--imagenet', default=d.imagenet,
                   help="TF-slim resnet_v1 ImageNet checkpoint for the backbone")
    g.add_argument('--random-seed', type=int, default=d.random_seed)
    g.add_argument('--deterministic', action='store_true', default=d.deterministic,
                   help='deterministic TensorFlow ops, run one at a time (one inter-op thread): '
                        'the same seed and data give the same weights, also across a kill and '
                        'resume (slower; train_distributed.py refuses it: asynchronous updates '
                        'have no fixed order)')
    g.add_argument('--log-every', type=int, default=d.log_every)
    g.add_argument('--val-split', default=d.val_split,
                   help='split in --data-dir to validate on at every checkpoint')
    g.add_argument('--val-max-images', type=int, default=d.val_max_images)
    return p


def add_inference_args(parser):
    """The flags evaluate.py, predict.py and export.py share: which run, at which output stride,
    with which scales and flips (paper, section 4.1)."""
    parser.add_argument('--restore-from', required=True,
                        help='snapshot dir (its latest checkpoint) or one checkpoint prefix')
    parser.add_argument('--output-stride', type=int, choices=(8, 16, 32), default=None,
                        help="overrides the run's output stride")
    parser.add_argument('--scales', type=parse_float_tuple, default=(1.0,),
                        help='input scales, e.g. 0.5,0.75,1.0,1.25,1.5,1.75')
    parser.add_argument('--flip', action='store_true',
                        help='also average left-right flipped inputs')


def config_from_args(args, **overrides):
    """The `TrainConfig` of parsed flags; flags that are not config fields are ignored."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    values.update(overrides)
    values['multi_grid'] = tuple(values['multi_grid'])
    return TrainConfig(**values)


def run_dir_of(path):
    """The run folder of a snapshot dir or of a checkpoint prefix inside one."""
    return path if os.path.isdir(path) else os.path.dirname(path)


def load_run_config(path):
    """Reads `config.json` of a run (a snapshot dir, or a checkpoint prefix inside one).

    Raises:
        FileNotFoundError: naming the file, when the run has no config.
    """
    config_path = os.path.join(run_dir_of(path), CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f'{config_path} not found: --restore-from must be a snapshot dir written by train.py '
            'or a checkpoint prefix inside one')
    with open(config_path) as f:
        values = json.load(f)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in values.items() if k in fields}
    values['multi_grid'] = tuple(values.get('multi_grid', TrainConfig.multi_grid))
    return TrainConfig(**values)


def write_config(config, snapshot_dir, name=CONFIG_FILE):
    """Writes the resolved config to `<snapshot_dir>/<name>` through a temporary file.

    The training loop writes `config.json` when a run starts fresh and never rewrites it on
    resume: it is the record of what the checkpoints are. A resume that changes one of
    `RESUMABLE_CHANGES` writes its config beside it, as `config-step-<N>.json`.
    """
    os.makedirs(snapshot_dir, exist_ok=True)
    path = os.path.join(snapshot_dir, name)
    tmp = f'{path}.tmp-{os.getpid()}'
    with open(tmp, 'w') as f:
        f.write(config.to_json() + '\n')
    os.replace(tmp, path)
    return path
