"""Defaults in one place, and the argparse builder the three training scripts share.

`TrainConfig` is the single source of truth of a run: the scripts only override its fields from the
command line, and the resolved config is written to `<snapshot-dir>/config.json`, which evaluate.py,
predict.py and export.py read back so that nobody repeats (or gets wrong) the architecture.
Nothing is parsed at import.
"""
import argparse
import dataclasses
import json
import math
import os
from typing import Optional, Tuple

CONFIG_FILE = 'config.json'
# The fields that fix the network's variables: a checkpoint only fits a model with the same ones.
ARCHITECTURE_FIELDS = ('num_layers', 'num_classes', 'multi_grid', 'model_variant',
                       'depth_multiplier', 'depth_divisor', 'atrous_rates', 'aspp_separable',
                       'decoder_output_stride', 'aspp_pooling_first')
# The fields a resumed run may change: where the records are, how far the run goes, how it is
# watched and what a fresh start would have loaded. Any other change would make the resumed run
# neither the recorded run nor the new one.
RESUMABLE_CHANGES = ('data_dir', 'num_steps', 'snapshot_dir', 'save_pred_every', 'max_to_keep',
                     'restore_from', 'imagenet', 'deterministic', 'log_every', 'val_split',
                     'val_max_images', 'keep_best',
                     # Variables stay float32 whatever the precision: the checkpoint is the same.
                     'precision')


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training run. Defaults are the paper's stage 1 (section 4.1): train_aug, OS 16, batch 16,
    crop 513, 30k steps, lr 0.007 poly with power 0.9, batch norm trained with decay 0.9997."""
    # Data and model.
    data_dir: str = 'data/records'
    split_name: str = 'train_aug'
    num_layers: int = 101
    output_stride: int = 16
    # The network (libs/nets/variants.py); None: resnet_v1_<num_layers>. The fields below left
    # None take the variant's defaults (`resolve_network`).
    model_variant: Optional[str] = None
    depth_multiplier: float = 1.0
    # MobileNetV2's rounding of its scaled depths; None: the reference's (`mobilenet_v2.py`).
    depth_divisor: Optional[int] = None
    multi_grid: Optional[Tuple[int, ...]] = None  # the last block's rates; None: the variant's
    atrous_rates: Optional[Tuple[int, ...]] = None  # ASPP's, at output stride 16; () for none
    aspp_separable: Optional[bool] = None
    decoder_output_stride: Optional[int] = None  # None: no decoder
    # Image pooling first in ASPP's concatenation (the reference's order); runs recorded before
    # this field existed concatenated it last.
    aspp_pooling_first: bool = True
    # None: from the records' dataset.json (21, VOC's, for records converted without one).
    num_classes: Optional[int] = None
    ignore_label: int = 255
    class_names: Optional[Tuple[str, ...]] = None  # from dataset.json, recorded in config.json
    # (r, g, b) per class, from dataset.json (VOC's colours for records without one).
    class_colors: Optional[Tuple[Tuple[int, int, int], ...]] = None
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
    # 'none', 'median-frequency', 'inverse-sqrt' or a file; the weights it gave are recorded.
    class_weights: str = 'none'
    class_weight_values: Optional[Tuple[float, ...]] = None
    # Keep probability of the dropout after ASPP's projection (libs/nets/dropout.py); None: the
    # variant's (0.9 as the reference trains its networks; 1.0, none, for slim's ResNets, the
    # paper's). Runs recorded before this field trained without dropout.
    dropout_keep_prob: Optional[float] = None
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
    keep_best: bool = False  # keep the checkpoint of the best val mIoU in <snapshot_dir>/best/
    # Precision: the dtype the network computes in ('float32', 'bfloat16', 'float16').
    precision: str = 'float32'

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @property
    def variant_name(self):
        """The network's variant name: `model_variant`, or resnet_v1_<num_layers>."""
        return self.model_variant or f'resnet_v1_{self.num_layers}'


def resolve_network(config):
    """`config` with every network field the variant decides made explicit: the variant's name,
    multi-grid, ASPP rates and kind (the decoder stays as given: None is no decoder), and the
    dropout after ASPP, so that config.json records the network and its training whole.

    Raises:
        ValueError: an unknown variant, or a depth multiplier or multi-grid it does not take.
    """
    from libs.nets import variants
    variant = variants.get(config.variant_name)
    values = dict(model_variant=variant.name)
    if variant.multi_grid is None:
        values['multi_grid'] = None
    elif config.multi_grid is None:
        values['multi_grid'] = variant.multi_grid
    elif len(config.multi_grid) != len(variant.multi_grid):
        raise ValueError(f'--multi-grid {",".join(map(str, config.multi_grid))}: {variant.name} '
                         f'takes {len(variant.multi_grid)} rates (default '
                         f'{",".join(map(str, variant.multi_grid))})')
    if config.depth_multiplier not in variant.depth_multipliers:
        raise ValueError(f'--depth-multiplier {config.depth_multiplier}: {variant.name} takes '
                         f'{", ".join(map(str, variant.depth_multipliers))}')
    if variant.default_depth_divisor is None:
        values['depth_divisor'] = None
    elif config.depth_divisor is None:
        values['depth_divisor'] = variant.default_depth_divisor(config.depth_multiplier)
    if config.atrous_rates is None:
        values['atrous_rates'] = variant.atrous_rates
    if config.aspp_separable is None:
        values['aspp_separable'] = variant.aspp_separable and bool(
            values.get('atrous_rates', config.atrous_rates))
    if variant.num_layers is not None:
        values['num_layers'] = variant.num_layers
    if config.dropout_keep_prob is None:
        values['dropout_keep_prob'] = variant.dropout_keep_prob
    return dataclasses.replace(config, **values)


# The smallest training crop: 32k+1 with k=1, so that even at output stride 32 the network's last
# features are 2x2 and the crop holds more than a border of padding.
MIN_CROP = 33


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help shows every flag's default, and the description and examples as written."""


def script_parser(doc):
    """The argparse parser of a script: its docstring's first line as the description, the rest
    (usage examples, notes) as the epilog, every flag shown with its default.

    It also hides TensorFlow's C++ INFO lines unless `TF_CPP_MIN_LOG_LEVEL` is set: TensorFlow
    logs one for every TFRecord file it opens, whatever its `buffer_size`, through the progress
    bars. Warnings and errors still show.
    """
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
    lines = doc.strip().splitlines()
    return argparse.ArgumentParser(description=lines[0], epilog='\n'.join(lines[1:]).strip(),
                                   formatter_class=HelpFormatter)


def _number(text, kind, minimum=None, maximum=None, above=None):
    """`text` as a finite `kind` (int or float) within the bounds, else ArgumentTypeError naming
    every bound (argparse prefixes the flag)."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'expected {"an integer" if kind is int else "a number"}, got {text!r}') from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f'expected a finite number, got {text!r}')
    checks = [(minimum, lambda bound: value >= bound, 'at least'),
              (maximum, lambda bound: value <= bound, 'at most'),
              (above, lambda bound: value > bound, 'above')]
    checks = [(bound, holds, words) for bound, holds, words in checks if bound is not None]
    if not all(holds(bound) for bound, holds, _ in checks):
        wanted = ' and '.join(f'{words} {bound}' for bound, _, words in checks)
        raise argparse.ArgumentTypeError(f'must be {wanted}, got {text!r}')
    return value


def positive_int(text):
    """argparse type: an integer >= 1 (counts, sizes, intervals)."""
    return _number(text, int, minimum=1)


def non_negative_int(text):
    """argparse type: an integer >= 0."""
    return _number(text, int, minimum=0)


def label_value(text):
    """argparse type: a label value 0..255 (labels are stored as 8-bit PNGs)."""
    return _number(text, int, minimum=0, maximum=255)


def class_count(text):
    """argparse type: a class count 1..255 (label 255 is the ignore label)."""
    return _number(text, int, minimum=1, maximum=255)


def crop_size(text):
    """argparse type: a square training crop of at least `MIN_CROP` pixels."""
    return _number(text, int, minimum=MIN_CROP)


def finite_float(text):
    """argparse type: any finite number (NaN and Inf are refused)."""
    return _number(text, float)


def non_negative_float(text):
    """argparse type: a finite number >= 0."""
    return _number(text, float, minimum=0.0)


def positive_float(text):
    """argparse type: a finite number > 0."""
    return _number(text, float, above=0.0)


def unit_interval(text):
    """argparse type: a finite number in [0, 1] (momentum, decay rates)."""
    return _number(text, float, minimum=0.0, maximum=1.0)


def keep_probability(text):
    """argparse type: a probability in (0, 1] (dropout's keep probability)."""
    return _number(text, float, maximum=1.0, above=0.0)


def class_weights_spec(text):
    """argparse type of `--class-weights`: a method name, or a file of weights (read and
    checked here, its count against the classes once the records are known)."""
    from libs.datasets.class_weights import CLASS_WEIGHT_METHODS, read_class_weights
    if text in CLASS_WEIGHT_METHODS:
        return text
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(
            f'{text!r} is neither {", ".join(CLASS_WEIGHT_METHODS)} nor a file of weights')
    try:
        read_class_weights(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def parse_int_tuple(text):
    """'1,2,4' -> (1, 2, 4), for `--multi-grid`: positive integers."""
    values = tuple(positive_int(t) for t in text.split(',') if t.strip())
    if not values:
        raise argparse.ArgumentTypeError(f'expected comma-separated integers, got {text!r}')
    return values


def parse_float_tuple(text):
    """'0.5,0.75,1.0' -> (0.5, 0.75, 1.0), for `--scales`: positive finite numbers."""
    values = tuple(positive_float(t) for t in text.split(',') if t.strip())
    if not values:
        raise argparse.ArgumentTypeError(f'expected comma-separated numbers, got {text!r}')
    return values


def check_outputs(parser, args, folders=(), files=()):
    """Refuses, with argparse's one-line error, output flags that cannot be written.

    Args:
        parser: the script's parser (for `parser.error`).
        args: its parsed flags.
        folders: names of flags (attribute names, e.g. 'output_dir') holding output folders.
        files: names of flags holding output files.
    """
    from libs.utils import filesystem
    for names, kind in ((folders, 'folder'), (files, 'file')):
        for name in names:
            value = getattr(args, name)
            if value is None:
                continue
            try:
                filesystem.check_writable(value, '--' + name.replace('_', '-'), kind)
            except ValueError as e:
                parser.error(str(e))


def build_train_parser(doc):
    """The flags of train.py, train_multi_gpu.py and train_distributed.py (the 2018 repo's names).

    Every default is `TrainConfig`'s; a flag left out keeps it. Every number is checked here, at
    parse time (`parse_train_args` adds the checks that involve two flags).

    Args:
        doc: the script's docstring (`script_parser`).
    """
    d = TrainConfig()
    p = script_parser(doc)
    g = p.add_argument_group('data and model')
    g.add_argument('--data-dir', default=d.data_dir, help='folder of TFRecord shards')
    g.add_argument('--split-name', default=d.split_name, help='split to train on')
    add_network_args(g)
    g.add_argument('--output-stride', type=int, default=d.output_stride, choices=(8, 16, 32),
                   help='input size / feature size; strides beyond it become atrous rates')
    g.add_argument('--num-classes', type=class_count, default=d.num_classes,
                   help="classes, background included; default the records' (their "
                        'dataset.json), and a different value is refused')
    g.add_argument('--ignore-label', type=label_value, default=d.ignore_label,
                   help='label value left out of the loss and the metric')
    g = p.add_argument_group('input')
    g.add_argument('--batch-size', type=positive_int, default=d.batch_size,
                   help='global batch size')
    g.add_argument('--input-size', type=crop_size, default=d.input_size,
                   help=f'square crop size, at least {MIN_CROP}; 16k+1 or 8k+1 fits the output '
                        'stride')
    g.add_argument('--random-scale', action=argparse.BooleanOptionalAction,
                   default=d.random_scale, help='random scale in [--min-scale, --max-scale]')
    g.add_argument('--min-scale', type=positive_float, default=d.min_scale,
                   help='smallest random scale factor')
    g.add_argument('--max-scale', type=positive_float, default=d.max_scale,
                   help='largest random scale factor')
    g.add_argument('--random-mirror', action=argparse.BooleanOptionalAction,
                   default=d.random_mirror, help='flip half the crops left-right')
    g = p.add_argument_group('optimisation')
    g.add_argument('--learning-rate', type=positive_float, default=d.learning_rate,
                   help='base learning rate of the poly schedule')
    g.add_argument('--power', type=non_negative_float, default=d.power,
                   help='poly learning-rate power: lr * (1 - step / num_steps) ** power')
    g.add_argument('--momentum', type=unit_interval, default=d.momentum,
                   help='momentum of SGD')
    g.add_argument('--weight-decay', type=non_negative_float, default=d.weight_decay,
                   help='L2 weight decay on the convolution weights')
    g.add_argument('--dropout-keep-prob', type=keep_probability, default=d.dropout_keep_prob,
                   help="keep probability of the dropout after ASPP's projection in training; "
                        "default the variant's: 0.9 as the reference DeepLab trains its "
                        "networks, 1 (none) for slim's ResNets (the paper's)")
    g.add_argument('--num-steps', type=positive_int, default=d.num_steps,
                   help='global step at which training ends')
    g.add_argument('--class-weights', type=class_weights_spec, default=d.class_weights,
                   metavar='none|median-frequency|inverse-sqrt|FILE',
                   help="per-class loss weights: from the training split's pixel counts in "
                        'dataset.json (median-frequency: median(f)/f_c; inverse-sqrt: '
                        '1/sqrt(f_c)), or a file of one weight per class, one a line')
    g = p.add_argument_group('batch norm')
    bn = g.add_mutually_exclusive_group()
    bn.add_argument('--freeze-bn', dest='freeze_bn', action='store_true', default=d.freeze_bn,
                    help='use the moving statistics and keep gamma/beta fixed')
    bn.add_argument('--fine-tune-bn', dest='freeze_bn', action='store_false',
                    help='train batch norm: batch statistics, moving averages updated (default)')
    g.add_argument('--bn-decay', type=unit_interval, default=d.bn_decay,
                   help='decay of the batch-norm moving averages')
    g = p.add_argument_group('checkpoints, logs and validation')
    g.add_argument('--snapshot-dir', default=d.snapshot_dir,
                   help='the run folder: checkpoints, config.json, TensorBoard events; re-running '
                        'with the same folder resumes')
    g.add_argument('--save-pred-every', type=positive_int, default=d.save_pred_every,
                   help='checkpoint (and validate) every N steps')
    g.add_argument('--max-to-keep', type=positive_int, default=d.max_to_keep,
                   help='checkpoints kept; older ones are deleted')
    g.add_argument('--restore-from', default=d.restore_from,
                   help="another run's snapshot dir or checkpoint prefix to start from "
                        '(weights only)')
    g.add_argument('--imagenet', default=d.imagenet,
                   help="the backbone's ImageNet checkpoint (TF-slim's resnet_v1_<N>.ckpt, "
                        "mobilenet_v2_1.0_224.ckpt; the reference DeepLab's xception_65 and "
                        'beta ResNet model.ckpt): docs/model_zoo.md')
    g.add_argument('--random-seed', type=non_negative_int, default=d.random_seed,
                   help='seed of the initial weights and the augmentation')
    g.add_argument('--deterministic', action='store_true', default=d.deterministic,
                   help='deterministic TensorFlow ops, run one at a time (one inter-op thread): '
                        'the same seed and data give the same weights, also across a kill and '
                        'resume (slower; train_distributed.py refuses it: asynchronous updates '
                        'have no fixed order)')
    g.add_argument('--log-every', type=positive_int, default=d.log_every,
                   help='print a progress line every N steps')
    g.add_argument('--val-split', default=d.val_split,
                   help='split in --data-dir to validate on at every checkpoint')
    g.add_argument('--val-max-images', type=positive_int, default=d.val_max_images,
                   help='validate on the first N images of --val-split only')
    g.add_argument('--keep-best', action='store_true', default=d.keep_best,
                   help='also keep the checkpoint of the best val mIoU so far in '
                        '<snapshot-dir>/best/ (a run folder of its own: --restore-from it)')
    g = p.add_argument_group('precision')
    g.add_argument('--precision', choices=PRECISIONS, default=d.precision,
                   help='dtype the convolutions compute in; variables, batch-norm statistics, '
                        'loss and metrics stay float32. bfloat16: CPUs with AVX512_BF16, Ampere '
                        'and later GPUs; float16: GPUs only, with dynamic loss scaling')
    return p


def parse_rates(text):
    """'6,12,18' -> (6, 12, 18); 'none' -> () (no atrous branches), for `--atrous-rates`."""
    return () if text.strip().lower() == 'none' else parse_int_tuple(text)


def parse_decoder_output_stride(text):
    """'4' -> 4; 'none' -> 0 (no decoder), for `--decoder-output-stride`."""
    if text.strip().lower() == 'none':
        return 0
    value = positive_int(text)
    if value not in (4, 8, 16):
        raise argparse.ArgumentTypeError(f'must be 4, 8, 16 or none, got {text!r}')
    return value


def add_network_args(group):
    """The flags that choose the network (train.py and benchmark.py); see `network_from_args`."""
    from libs.nets.variant_names import VARIANT_NAMES  # without TensorFlow
    group.add_argument('--model-variant', choices=VARIANT_NAMES, default=None,
                       help='the network (the reference DeepLab\'s names); default '
                            'resnet_v1_<--num-layers>')
    group.add_argument('--num-layers', type=int, default=None, choices=(50, 101, 152),
                       help='ResNet-v1 depth of the backbone (short for --model-variant '
                            'resnet_v1_<N>); default 101')
    group.add_argument('--depth-multiplier', type=positive_float, default=1.0,
                       help="MobileNetV2's depth multiplier (1.0 and 0.5 are published)")
    group.add_argument('--depth-divisor', type=int, choices=(1, 8), default=None,
                       help="MobileNetV2: round the scaled depths to multiples of this: 8 as "
                            "slim's ImageNet files, 1 as the reference DeepLab at multipliers "
                            "other than 1; default the reference's, or the --imagenet file's")
    group.add_argument('--multi-grid', type=parse_int_tuple, default=None,
                       help="the last block's unit rates, e.g. 1,2,4; default the variant's "
                            '(1,2,4 for the ResNets, 1,1,1 for Xception)')
    group.add_argument('--atrous-rates', type=parse_rates, default=None,
                       help="ASPP's atrous rates at output stride 16 (doubled at 8), e.g. "
                            "6,12,18, or none; default the variant's (none for MobileNetV2)")
    separable = group.add_mutually_exclusive_group()
    separable.add_argument('--aspp-separable', dest='aspp_separable', action='store_true',
                           default=None, help="separable atrous branches (Xception's default)")
    separable.add_argument('--no-aspp-separable', dest='aspp_separable', action='store_false',
                           help='regular atrous branches (the paper\'s, the ResNets\' default)')
    group.add_argument('--decoder-output-stride', type=parse_decoder_output_stride,
                       default=None, metavar='4|8|16|none',
                       help="the DeepLabV3+ decoder at this output stride; default the "
                            "variant's (4 for Xception, none for the others)")


def network_from_args(parser, args):
    """The network fields of parsed `add_network_args` flags, resolved (`resolve_network`);
    argparse's one-line error for a contradiction."""
    from libs.nets import variants
    if args.model_variant and args.num_layers and \
            args.model_variant != f'resnet_v1_{args.num_layers}':
        parser.error(f'--num-layers {args.num_layers} contradicts --model-variant '
                     f'{args.model_variant}; give one of them')
    variant = variants.get(args.model_variant or f'resnet_v1_{args.num_layers or 101}')
    decoder = args.decoder_output_stride
    decoder = variant.decoder_output_stride if decoder is None else (decoder or None)
    values = dict(model_variant=variant.name, depth_multiplier=args.depth_multiplier,
                  depth_divisor=args.depth_divisor, multi_grid=args.multi_grid,
                  atrous_rates=args.atrous_rates, aspp_separable=args.aspp_separable,
                  decoder_output_stride=decoder)
    if decoder is not None and decoder not in variant.decoder_end_points:
        parser.error(f'--decoder-output-stride {decoder}: {variant.name} has decoder end points '
                     f'at {", ".join(map(str, sorted(variant.decoder_end_points)))}')
    if decoder is not None and decoder >= args.output_stride:
        parser.error(f'--decoder-output-stride {decoder} must be below --output-stride '
                     f'{args.output_stride}')
    try:
        return dataclasses.asdict(resolve_network(TrainConfig(**values)))
    except ValueError as e:
        parser.error(str(e))


def _network_of_reference_checkpoint(parser, args):
    """`--restore-from` a published checkpoint of the reference DeepLab without network flags:
    the network flags take the checkpoint's network (`published.describe`)."""
    if not args.restore_from or args.model_variant or args.num_layers:
        return
    from libs.runs import checkpoints, published
    try:
        prefix = checkpoints.resolve_checkpoint(args.restore_from)
    except FileNotFoundError as e:
        parser.error(f'--restore-from: {e}')
    if not published.is_reference_checkpoint(prefix):
        return
    try:
        found = published.describe(prefix)
    except ValueError as e:
        parser.error(f'--restore-from: {e}')
    args.model_variant = found['model_variant']
    if found['depth_multiplier'] != 1.0:
        args.depth_multiplier = found['depth_multiplier']
    if args.depth_divisor is None:
        args.depth_divisor = found['depth_divisor']
    for name in ('atrous_rates', 'aspp_separable'):
        if getattr(args, name) is None:
            setattr(args, name, found[name])
    if args.decoder_output_stride is None:
        try:
            args.decoder_output_stride = published.check_decoder_output_stride(
                prefix, found, None) or 0
        except ValueError as e:
            parser.error(f'--restore-from: {e}')


def _depth_divisor_of_imagenet_checkpoint(args):
    """A network with a depth multiplier (MobileNetV2) from `--imagenet`: its depths rounded as
    that file's (slim's round to multiples of 8, the reference DeepLab's do not), unless
    --depth-divisor says. A file that is no checkpoint is named when it is loaded."""
    from libs.nets import variants
    variant = variants.get(args.model_variant or f'resnet_v1_{args.num_layers or 101}')
    if variant.depth_of_checkpoint is None or not args.imagenet or args.depth_divisor is not None:
        return
    import tensorflow as tf
    try:
        shapes = dict(tf.train.list_variables(args.imagenet))
    except (tf.errors.OpError, ValueError):
        return
    depth_multiplier, divisor = variant.depth_of_checkpoint(shapes)
    if depth_multiplier == args.depth_multiplier:
        args.depth_divisor = divisor


def parse_train_args(parser, argv=None, check_snapshot_dir=True):
    """Parses a training script's flags, with the checks that involve two flags and the output.

    Args:
        parser: from `build_train_parser` (plus the script's own flags).
        argv: the command line; default sys.argv[1:].
        check_snapshot_dir: check that `--snapshot-dir` can be written (not for tasks that only
            serve, as parameter-server tasks).
    """
    args = parser.parse_args(argv)
    if args.min_scale > args.max_scale:
        parser.error(f'--min-scale {args.min_scale} is above --max-scale {args.max_scale}')
    if args.num_classes is not None and args.ignore_label < args.num_classes:
        parser.error(f'--ignore-label {args.ignore_label} is one of the {args.num_classes} '
                     f'classes (0..{args.num_classes - 1}); it must be outside them')
    if args.keep_best and not args.val_split:
        parser.error('--keep-best needs --val-split: the best checkpoint is the one of the best '
                     'val mIoU')
    # The network's checks read the variants' table (and checkpoints): TensorFlow starts here.
    _network_of_reference_checkpoint(parser, args)
    _depth_divisor_of_imagenet_checkpoint(args)
    network = network_from_args(parser, args)
    for name in ('model_variant', 'num_layers', 'depth_multiplier', 'depth_divisor',
                 'multi_grid', 'atrous_rates', 'aspp_separable', 'decoder_output_stride'):
        setattr(args, name, network[name])
    if check_snapshot_dir:
        check_outputs(parser, args, folders=('snapshot_dir',))
    return args


PRECISIONS = ('float32', 'bfloat16', 'float16')


def add_inference_args(parser):
    """The flags evaluate.py, predict.py and export.py share: which run, at which output stride,
    with which scales and flips (paper, section 4.1), sliding windows and precision."""
    parser.add_argument('--restore-from', required=True,
                        help='snapshot dir (its latest checkpoint) or one checkpoint prefix; or '
                             'a published checkpoint of the reference DeepLab (model.ckpt-N)')
    parser.add_argument('--output-stride', type=int, choices=(8, 16, 32), default=None,
                        help="overrides the run's output stride")
    parser.add_argument('--scales', type=parse_float_tuple, default=(1.0,),
                        help='input scales, e.g. 0.5,0.75,1.0,1.25,1.5,1.75')
    parser.add_argument('--flip', action='store_true',
                        help='also average left-right flipped inputs')
    parser.add_argument('--crop-size', type=positive_int, default=None,
                        help='sliding-window inference with windows of N x N pixels (of each '
                             'scaled image), for images larger than memory allows; default: the '
                             'whole image at once')
    parser.add_argument('--stride', type=positive_int, default=None,
                        help='step between sliding windows; default two thirds of --crop-size')
    parser.add_argument('--eval-crop-size', type=parse_int_tuple, default=None,
                        metavar='H[,W]',
                        help="infer on the reference DeepLab's one fixed canvas (its "
                             '--eval_crop_size: 513 for VOC and ADE20K, 1025,2049 for '
                             'Cityscapes), to reproduce a published figure exactly; default each '
                             'image on its own smallest OS*k+1 canvas')
    parser.add_argument('--precision', choices=PRECISIONS, default='float32',
                        help='dtype the network computes in (weights stay float32; softmax and '
                             'averaging float32). bfloat16: CPUs with AVX512_BF16, Ampere and '
                             'later GPUs; float16: GPUs only')
    add_reference_args(parser)


def add_reference_args(parser):
    """The flags that say what a published checkpoint of the reference DeepLab does not tell
    (`libs/runs/published.py`); ignored for runs of this project."""
    g = parser.add_argument_group('published checkpoints of the reference DeepLab '
                                  '(--restore-from .../model.ckpt-N)')
    g.add_argument('--dataset', choices=('voc', 'cityscapes', 'ade20k'), default=None,
                   help='whose class names and colours; default the one with the '
                        "checkpoint's class count")
    g.add_argument('--atrous-rates', type=parse_rates, default=None,
                   help="ASPP's rates at output stride 16, when the checkpoint has other than "
                        'three atrous branches')
    g.add_argument('--decoder-output-stride', type=parse_decoder_output_stride, default=None,
                   metavar='4|8|16', help="the decoder's output stride, when its end point is "
                                          'ambiguous')


def reference_hints(args):
    """`published.reference_config`'s keyword arguments from `add_reference_args` flags."""
    return dict(dataset=args.dataset, atrous_rates=args.atrous_rates,
                decoder_output_stride=args.decoder_output_stride or None)


def check_inference_args(parser, args):
    """Refusals that concern several inference flags together (argparse's one-line error)."""
    if args.stride is not None and args.crop_size is None:
        parser.error('--stride needs --crop-size (sliding-window inference)')
    if getattr(args, 'eval_crop_size', None) is not None:
        if len(args.eval_crop_size) == 1:
            args.eval_crop_size = args.eval_crop_size * 2
        if len(args.eval_crop_size) != 2:
            parser.error('--eval-crop-size takes H or H,W')
        if args.crop_size is not None:
            parser.error('--eval-crop-size (one canvas) and --crop-size (sliding windows) do '
                         'not go together')


def config_from_args(args, **overrides):
    """The `TrainConfig` of parsed flags; flags that are not config fields are ignored."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    values.update(overrides)
    for name in ('multi_grid', 'atrous_rates'):
        if values.get(name) is not None:
            values[name] = tuple(values[name])
    return resolve_network(TrainConfig(**values))


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
    if 'model_variant' not in values:
        # Recorded before the variants: a slim ResNet with the paper's ASPP, image pooling
        # concatenated last.
        values['aspp_pooling_first'] = False
    # Recorded before the dropout after ASPP existed: trained without it.
    values.setdefault('dropout_keep_prob', 1.0)
    for name in ('multi_grid', 'atrous_rates'):
        if values.get(name) is not None:
            values[name] = tuple(values[name])
    if values.get('class_names') is not None:
        values['class_names'] = tuple(values['class_names'])
    if values.get('class_colors') is not None:
        values['class_colors'] = tuple(tuple(colour) for colour in values['class_colors'])
    if values.get('class_weight_values') is not None:
        values['class_weight_values'] = tuple(values['class_weight_values'])
    return resolve_network(TrainConfig(**values))


def write_config(config, snapshot_dir, name=CONFIG_FILE):
    """Writes the resolved config to `<snapshot_dir>/<name>` through a temporary file.

    The training loop writes `config.json` when a run starts fresh and never rewrites it on
    resume: it is the record of what the checkpoints are. A resume that changes one of
    `RESUMABLE_CHANGES` writes its config beside it, as `config-step-<N>.json`.
    """
    os.makedirs(snapshot_dir, exist_ok=True)
    path = os.path.join(snapshot_dir, name)
    tmp = f'{path}.tmp-{os.getpid()}'
    try:
        with open(tmp, 'w') as f:
            f.write(config.to_json() + '\n')
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
