"""ImageNet initialisation of the backbone from TF1 checkpoints, by name: TF-slim's public
`resnet_v1` and `mobilenet_v2` files, the reference DeepLab's `xception_65` and beta ResNet files;
and the name-based assignment the published DeepLab checkpoints load through (`published.py`).

Paper, section 4: the ResNet backbone starts from ImageNet weights; ASPP and the logits start from
scratch. The weights are TF-slim's `resnet_v1_50`, `resnet_v1_101` and `resnet_v1_152`, listed in
the TF-slim model zoo
(https://github.com/tensorflow/models/tree/master/research/slim#pre-trained-models) as tarballs
such as http://download.tensorflow.org/models/resnet_v1_101_2016_08_28.tar.gz, which
unpack to one name-based TF1 checkpoint file (`resnet_v1_101.ckpt`). The user downloads and unpacks
it and passes its path; this code never fetches anything.

The backbone names its variables exactly like slim (see `layers.py`), so every convolution kernel
and every batch-norm gamma, beta, moving mean and moving variance is loaded by name. What else the
public files hold (`global_step`, `resnet_v1_<depth>/mean_rgb`, the 1000-class
`resnet_v1_<depth>/logits/{weights, biases}`) is left out and listed in the report; any other
tensor under `resnet_v1_<depth>/` means another network layout and is refused. Loading is all
or nothing: every check runs before the first variable is assigned, and a checkpoint that does not
fit is refused with a `ValueError` that says why. The other backbones load the same way under
their own scope (the variant's), their ImageNet classifier left out.
"""
import dataclasses
import os
import re

import numpy as np
import tensorflow as tf

LOGITS_REASON = 'the 1000-class ImageNet classifier, not part of DeepLabV3'
# slim's resnet_v1 checkpoints keep the RGB mean their ImageNet training subtracted, [3] float32.
MEAN_RGB_REASON = ('the RGB mean stored beside the ImageNet weights; the input pipeline subtracts '
                   'its own (slim\'s preprocessing mean)')
TRAINING_STATE = ('global_step', 'beta1_power', 'beta2_power')
# Slots that TF1 optimizers and tf.train.ExponentialMovingAverage add under each variable's name.
SLOT_SUFFIXES = ('Momentum', 'ExponentialMovingAverage', 'Adam', 'Adam_1', 'RMSProp', 'RMSProp_1',
                 'Adagrad', 'Adadelta', 'Adadelta_1', 'Ftrl', 'Ftrl_1')
_SCOPE = re.compile(r'resnet_v1_(\d+)$')
_V2_FILE = re.compile(r'(\.index|\.data-\d{5}-of-\d{5})$')
_SHOWN = 5  # Names quoted in a refusal.


@dataclasses.dataclass(frozen=True)
class LeftOut:
    """Checkpoint tensors that were not loaded, and why.

    Attributes:
        pattern: what the group covers, e.g. `resnet_v1_101/logits/*`.
        reason: why the group is not loaded.
        names: the checkpoint names in the group, sorted.
    """
    pattern: str
    reason: str
    names: tuple


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What `load_slim_backbone` did.

    Attributes:
        checkpoint: the checkpoint prefix that was read.
        scope: the backbone's scope, e.g. `resnet_v1_101`.
        loaded: how many backbone variables were assigned (all of them).
        left_out: the groups of checkpoint tensors that were not loaded.
        whole_network: every variable of the network was loaded, not only the backbone's.
    """
    checkpoint: str
    scope: str
    loaded: int
    left_out: tuple
    whole_network: bool = False

    @property
    def left_out_names(self):
        """Every checkpoint name that was not loaded, sorted."""
        return sorted(name for group in self.left_out for name in group.names)

    def summary(self):
        """A few lines for the log: what was loaded, what was left out and why."""
        rest = ('the whole network' if self.whole_network else
                'ASPP and the logits are not in the backbone and keep their fresh '
                'initialisation')
        lines = [f'Loaded {self.loaded} {self.scope} variables (conv weights, batch-norm '
                 f'gamma/beta/moving statistics) from {self.checkpoint}; {rest}.']
        if self.left_out:
            lines.append(f'Left out {len(self.left_out_names)} checkpoint tensors:')
            lines += [f'  {g.pattern} ({len(g.names)}): {g.reason}' for g in self.left_out]
        return '\n'.join(lines)


def load_slim_backbone(backbone, checkpoint_path, scope=None, classifier=None):
    """Assigns an ImageNet checkpoint to the backbone, by name: TF-slim's `resnet_v1_<depth>`, or
    the backbone of another variant (`scope`: its scope, e.g. 'MobilenetV2').

    Call it eagerly, after building the model (inside `strategy.scope()` or not) and before
    training; under `MirroredStrategy` every replica's copy is assigned, batch-norm moving
    statistics included.

    Args:
        backbone: `model.backbone` (a `ResNetV1`, `MobileNetV2`, `Xception65`).
        checkpoint_path: a checkpoint prefix (`.../resnet_v1_101.ckpt`, TF1 V1 or V2 format; a V2
            `.index` or `.data-*` file name is taken as its prefix) or a directory whose
            `checkpoint` state file names one.
        scope: the backbone's scope in the checkpoint; default `resnet_v1_<backbone.depth>`.
        classifier: {checkpoint name prefix: why it is left out} for the parts of the ImageNet
            network DeepLab does not build beyond `<scope>/logits/` (e.g. MobileNetV2's
            `Logits/` and its last 1x1 convolution `Conv_1/`).
    Returns:
        A `LoadReport`.
    Raises:
        ValueError: the path is not a TF checkpoint; the checkpoint is of another depth or holds
            no such network; a tensor's shape or dtype differs from the model's; the
            checkpoint lacks backbone variables or has backbone tensors the model does not. The
            model is unchanged then.
        RuntimeError: called inside `tf.function` or `strategy.run`.
    """
    _check_eager('load_slim_backbone')
    prefix, reader = open_checkpoint(checkpoint_path)
    shapes = reader.get_variable_to_shape_map()
    scope = scope or f'resnet_v1_{backbone.depth}'
    _check_scope(prefix, shapes, scope, getattr(backbone, 'depth', None))
    classifier = dict(classifier or {})
    classifier.setdefault(f'{scope}/logits/', LOGITS_REASON)

    def classify(name):
        if name.rsplit('/', 1)[-1] in SLOT_SUFFIXES:
            return '*/' + name.rsplit('/', 1)[-1], 'optimizer slot or moving-average shadow'
        if name in TRAINING_STATE:
            return name, 'training state'
        for start, reason in classifier.items():
            if name.startswith(start):
                return start + '*', reason
        if name == f'{scope}/mean_rgb':
            return name, MEAN_RGB_REASON
        if name.startswith(f'{scope}/'):
            return None
        top = name.split('/')[0]
        return (f'{top}/*' if '/' in name else top), f'outside {scope}: not part of the backbone'

    loaded, left_out = assign_by_name(prefix, reader, backbone.variables, classify,
                                      f'{scope} variables', f'under {scope}/')
    return LoadReport(checkpoint=prefix, scope=scope, loaded=loaded, left_out=left_out)


def assign_by_name(prefix, reader, variables, classify, what, where, transforms=None):
    """Assigns checkpoint tensors to `variables` by name, all or nothing.

    Every check runs before the first assignment: a variable the checkpoint lacks, a checkpoint
    tensor that is neither a variable nor left out by `classify`, or a shape or dtype that
    differs is refused, naming the tensors.

    Args:
        prefix, reader: the checkpoint (`open_checkpoint`).
        variables: the variables to assign; their names (without ':0') are checkpoint names.
        classify: name -> (pattern, reason) for a checkpoint tensor that is left out, or None
            for one the model should have had.
        what: the variables, for messages ('resnet_v1_50 variables').
        where: where unknown tensors were found, for messages ('under resnet_v1_50/').
        transforms: {name: (function of the checkpoint value, what it does)}, applied before
            the shape check (e.g. dropping a class from the classifier).
    Returns:
        (number of variables assigned, tuple of `LeftOut`).
    """
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    transforms = transforms or {}
    by_name = {}
    for variable in variables:
        name = variable.name.split(':')[0]
        if name in by_name:
            raise ValueError(f'the model has two variables named {name}; names must be unique '
                             f'to load by name')
        by_name[name] = variable

    groups, unknown = {}, []
    for name in shapes:
        if name in by_name:
            continue
        group = classify(name)
        if group is None:
            unknown.append(name)
        else:
            groups.setdefault(group, []).append(name)

    missing = sorted(set(by_name) - set(shapes))
    if missing:
        raise ValueError(f'checkpoint {prefix} lacks {len(missing)} of the model\'s '
                         f'{len(by_name)} {what}: {_first(missing)}')
    if unknown:
        raise ValueError(f'checkpoint {prefix} has {len(unknown)} tensors {where} that '
                         f'the model does not have (another network layout?): '
                         f'{_first(sorted(unknown))}')

    def shape(name):
        if name not in transforms:
            return list(shapes[name])
        return list(np.shape(transforms[name][0](np.zeros(shapes[name], np.float32))))

    wrong = [f'{name}: checkpoint {shape(name)} {dtypes[name].name}, model '
             f'{variable.shape.as_list()} {variable.dtype.name}'
             for name, variable in sorted(by_name.items())
             if shape(name) != variable.shape.as_list() or dtypes[name] != variable.dtype]
    if wrong:
        raise ValueError(f'checkpoint {prefix} does not fit the model in {len(wrong)} tensors: '
                         + '; '.join(wrong[:_SHOWN]) + ('; ...' if len(wrong) > _SHOWN else ''))

    # Read everything first, so a read error cannot leave the model half loaded.
    try:
        values = {name: reader.get_tensor(name) for name in by_name}
    except tf.errors.OpError as error:
        raise ValueError(f'checkpoint {prefix} could not be read: {error.message}') from None
    for name, variable in by_name.items():
        value = values[name]
        if name in transforms:
            value = transforms[name][0](value)
        variable.assign(value)
    left_out = tuple(LeftOut(pattern, reason, tuple(sorted(names)))
                     for (pattern, reason), names in sorted(groups.items()))
    return len(by_name), left_out


def _check_eager(what):
    if not tf.executing_eagerly() or (tf.distribute.has_strategy()
                                      and not tf.distribute.in_cross_replica_context()):
        raise RuntimeError(f'{what} runs eagerly in cross-replica context, '
                           'not inside tf.function or strategy.run')


def open_checkpoint(path):
    """Returns (prefix, reader) for a checkpoint prefix, a V2 file of one, or a directory."""
    if os.path.isdir(path):
        prefix = tf.train.latest_checkpoint(path)
        if prefix is None:
            raise ValueError(f'{path} is not a TF checkpoint: a directory without a `checkpoint` '
                             f'state file that names one')
    else:
        prefix = path
        if _V2_FILE.search(path) and os.path.exists(_V2_FILE.sub('', path) + '.index'):
            prefix = _V2_FILE.sub('', path)
    try:
        return prefix, tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as error:
        detail = getattr(error, 'message', str(error))
        raise ValueError(f'{path} is not a TF checkpoint ({detail})') from None


def _check_scope(prefix, shapes, scope, depth=None):
    """Refuses a checkpoint without `scope`, naming the resnet_v1 depths it does hold (for a
    ResNet, `depth`) or its top-level names."""
    tops = sorted({name.split('/')[0] for name in shapes})
    if scope in tops:
        return
    if _SCOPE.match(scope):
        found = sorted((top for top in tops if _SCOPE.match(top)),
                       key=lambda s: int(_SCOPE.match(s).group(1)))
        if found:
            raise ValueError(f'checkpoint {prefix} is {", ".join(found)}, model has {depth} '
                             'layers')
        raise ValueError(f'checkpoint {prefix} holds no resnet_v1_<depth> scope (top-level '
                         f'names: {_first(tops)}); expected {scope} from the TF-slim model zoo')
    raise ValueError(f'checkpoint {prefix} holds no {scope} scope (top-level names: '
                     f'{_first(tops)})')


def _first(names):
    """The first few names, and how many more."""
    more = f' and {len(names) - _SHOWN} more' if len(names) > _SHOWN else ''
    return ', '.join(names[:_SHOWN]) + more
