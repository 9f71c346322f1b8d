"""The reference DeepLab's published checkpoints (tensorflow/models research/deeplab,
g3doc/model_zoo.md): name-based TF1 checkpoints (`model.ckpt-N` inside each tarball) of the
networks `libs/nets` builds under the same variable names.

What a checkpoint holds tells the network: the backbone (by its first convolution's variable
name, `Variant.signature`: the beta ResNets' is `conv1_1`), MobileNetV2's depth multiplier and
depth rounding (`Variant.depth_of_checkpoint`), the ASPP kind and branch count (`aspp<i>` or
`aspp<i>_depthwise`), the decoder (`decoder/...`, its output stride from the depth of the
low-level features it projects) and the class count
(`logits/semantic/biases`). The class names come from the dataset whose class count it has (21:
PASCAL VOC, 19: Cityscapes, 151: ADE20K), or from `--dataset` or the records. The reference's
ADE20K checkpoints have 151 logits, the first for the pixels its evaluation ignores; this project's
ADE20K records have 150 classes, so that first logit is left out.
"""
import dataclasses
import os

import tensorflow as tf

import config as config_lib
from libs.nets import pretrained, variants
from libs.nets.aspp import RATES_AT_OS16
from libs.nets.deeplabv3 import LOGITS_SCOPE, DeepLabV3

LOGITS = f'{LOGITS_SCOPE}/biases'


@dataclasses.dataclass(frozen=True)
class ReferenceDataset:
    """A dataset the reference published checkpoints for.

    Attributes:
        name: the `--dataset` value.
        description: () -> `DatasetDescription` of this project's records of it.
        extra_logits: logits before this project's first class, left out when loading.
    """
    name: str
    description: object
    extra_logits: int = 0

    @property
    def checkpoint_classes(self):
        return len(self.description().class_names) + self.extra_logits


def _voc():
    from libs.datasets import voc
    return voc.dataset()


def _cityscapes():
    from libs.datasets import cityscapes
    return cityscapes.dataset()


def _ade20k():
    from libs.datasets import ade20k
    return ade20k.dataset()


DATASETS = {'voc': ReferenceDataset('voc', _voc), 'cityscapes': ReferenceDataset('cityscapes',
                                                                                   _cityscapes),
            'ade20k': ReferenceDataset('ade20k', _ade20k, extra_logits=1)}


def is_reference_checkpoint(path):
    """Whether `path` is a name-based checkpoint (prefix, or a folder whose `checkpoint` file
    names one) with the reference's logits, rather than a run of this project."""
    prefix = tf.train.latest_checkpoint(path) if os.path.isdir(path) else path
    if prefix is None or not os.path.isfile(prefix + '.index'):
        return False
    names = {name for name, _ in tf.train.list_variables(prefix)}
    return LOGITS in names and not any(name.startswith('model/') for name in names)


def describe(prefix, shapes=None):
    """The network of a reference checkpoint, from its variable names and shapes.

    Returns:
        dict of `TrainConfig` network fields (model_variant, num_layers, depth_multiplier,
        multi_grid, atrous_rates, aspp_separable, decoder_output_stride), 'checkpoint_classes',
        and 'decoder_strides': the decoder output strides whose end point has the depth the
        checkpoint's decoder projects (one when it can be told, several when not: then
        decoder_output_stride is None and --decoder-output-stride decides).
    Raises:
        ValueError: naming what was found, when a part cannot be told.
    """
    shapes = shapes or dict(tf.train.list_variables(prefix))
    tops = sorted({name.split('/')[0] for name in shapes})
    found = [v for v in variants.VARIANTS.values() if v.signature in shapes]
    if len(found) != 1:
        raise ValueError(f'checkpoint {prefix}: no backbone of {", ".join(variants.VARIANTS)} '
                         f'found (top-level names: {", ".join(tops[:8])})')
    variant = found[0]
    values = dict(model_variant=variant.name, multi_grid=variant.multi_grid,
                  depth_multiplier=1.0, depth_divisor=None)
    if variant.num_layers is not None:
        values['num_layers'] = variant.num_layers
    if variant.depth_of_checkpoint is not None:
        values['depth_multiplier'], values['depth_divisor'] = variant.depth_of_checkpoint(shapes)
    branches = 0
    while any(f'aspp{branches + 1}{kind}' in tops for kind in ('', '_depthwise')):
        branches += 1
    values['aspp_separable'] = 'aspp1_depthwise' in tops
    if branches == 0:
        values['atrous_rates'] = ()
    elif branches == len(RATES_AT_OS16):
        values['atrous_rates'] = RATES_AT_OS16
    else:
        values['atrous_rates'] = None  # told by --atrous-rates
    values['decoder_output_stride'], values['decoder_strides'] = None, ()
    projection = shapes.get('decoder/feature_projection0/weights')
    if projection:
        values['decoder_strides'] = _decoder_strides(prefix, variant, values, projection[2])
        if len(values['decoder_strides']) == 1:
            values['decoder_output_stride'] = values['decoder_strides'][0]
    if LOGITS not in shapes:
        raise ValueError(f'checkpoint {prefix} has no {LOGITS}: not a DeepLab checkpoint')
    values['checkpoint_classes'] = shapes[LOGITS][0]
    return values


def _decoder_strides(prefix, variant, values, channels):
    """The decoder output strides whose end point has `channels` channels."""
    probe = DeepLabV3(num_classes=1, model_variant=variant.name,
                      depth_multiplier=values['depth_multiplier'],
                      depth_divisor=values['depth_divisor'], atrous_rates=())
    strides = tuple(stride for stride, end_point in sorted(variant.decoder_end_points.items())
                    if probe.backbone.low_level_channels(end_point) == channels)
    if not strides:
        raise ValueError(f'checkpoint {prefix}: the decoder projects {channels} channels, which '
                         f'no end point of {variant.name} has')
    return strides


def check_decoder_output_stride(prefix, found, decoder_output_stride):
    """The decoder output stride of a described checkpoint (`describe`), given
    `--decoder-output-stride` (or None); ValueError naming the flag where it must decide."""
    strides = found['decoder_strides']
    if decoder_output_stride and strides and decoder_output_stride not in strides:
        raise ValueError(f'--decoder-output-stride {decoder_output_stride}: the decoder of '
                         f'{prefix} takes the end point at output stride '
                         f'{" or ".join(map(str, strides))}')
    if len(strides) > 1 and not decoder_output_stride:
        raise ValueError(f'checkpoint {prefix}: its decoder fits the end points at output '
                         f'strides {", ".join(map(str, strides))}: pass --decoder-output-stride')
    return decoder_output_stride or found['decoder_output_stride']


def reference_config(prefix, dataset=None, output_stride=16, atrous_rates=None,
                     decoder_output_stride=None, log=print):
    """The `TrainConfig` (network, classes) of a reference checkpoint.

    Args:
        dataset: a key of `DATASETS`; None: the one with the checkpoint's class count.
        output_stride: the output stride to run at (the checkpoint does not tell it).
        atrous_rates: ASPP's rates at output stride 16, when the checkpoint's branch count is
            not the usual three.
        decoder_output_stride: the decoder's, when its end point is ambiguous.
        log: where the line saying what was read goes.
    Returns:
        (`TrainConfig`, the dataset's `ReferenceDataset`).
    Raises:
        ValueError: one line naming what was found and the flag that decides.
    """
    values = describe(prefix)
    values['decoder_output_stride'] = check_decoder_output_stride(prefix, values,
                                                                  decoder_output_stride)
    del values['decoder_strides']
    classes = values.pop('checkpoint_classes')
    if values['atrous_rates'] is None:
        if atrous_rates is None:
            raise ValueError(f'checkpoint {prefix} has ASPP branches of rates the checkpoint '
                             'does not tell: pass --atrous-rates (at output stride 16)')
        values['atrous_rates'] = tuple(atrous_rates)
    if dataset is None:
        matches = [d for d in DATASETS.values() if d.checkpoint_classes == classes]
        if len(matches) != 1:
            known = ', '.join(f'{d.name} ({d.checkpoint_classes})' for d in DATASETS.values())
            raise ValueError(f'checkpoint {prefix} has {classes} classes, which is none of '
                             f'{known}: pass --dataset or the records (--data-dir) it was '
                             'trained on')
        reference = matches[0]
    else:
        reference = DATASETS[dataset]
        if reference.checkpoint_classes != classes:
            raise ValueError(f'checkpoint {prefix} has {classes} classes, --dataset {dataset} '
                             f'{reference.checkpoint_classes}')
    description = reference.description()
    config = config_lib.resolve_network(config_lib.TrainConfig(
        output_stride=output_stride, num_classes=len(description.class_names),
        class_names=tuple(description.class_names),
        class_colors=tuple(tuple(c) for c in description.palette),
        ignore_label=description.ignore_label, **values))
    log(f'{prefix}: the reference DeepLab\'s {describe_network(config)}, {classes} classes '
        f'({reference.name}' + (f'; its first logit, the pixels the reference ignores, left '
                                'out' if reference.extra_logits else '') + ')')
    return config, reference


def describe_network(config):
    """e.g. 'xception_65, separable ASPP 6,12,18 (at OS 16), decoder at OS 4'."""
    parts = [config.variant_name + (f' x{config.depth_multiplier:g}'
                                    if config.depth_multiplier != 1.0 else '')]
    if config.atrous_rates:
        parts.append(f'{"separable" if config.aspp_separable else "regular"} ASPP '
                     f'{",".join(map(str, config.atrous_rates))} (at OS 16)')
    else:
        parts.append('ASPP without atrous branches')
    if config.decoder_output_stride:
        parts.append(f'decoder at OS {config.decoder_output_stride}')
    return ', '.join(parts)


def extra_logits_for(class_names, prefix):
    """The logits to leave out of a reference checkpoint for a model of `class_names`: the
    reference dataset's when its classes are those and its checkpoints' count the checkpoint's,
    else 0."""
    classes = dict(tf.train.list_variables(prefix))[LOGITS][0]
    for dataset in DATASETS.values():
        if (dataset.checkpoint_classes == classes and class_names is not None
                and tuple(dataset.description().class_names) == tuple(class_names)):
            return dataset.extra_logits
    return 0


def global_step(prefix):
    """The checkpoint's `global_step`, or None."""
    reader = tf.train.load_checkpoint(prefix)
    return int(reader.get_tensor('global_step')) if reader.has_tensor('global_step') else None


def load_reference_weights(model, prefix, extra_logits=0, other_classes=False):
    """Assigns a reference checkpoint to every variable of `model`, by name, all or nothing.

    Left out and reported: the global step, optimiser slots and moving-average copies
    (`<name>/Momentum`, `<name>/ExponentialMovingAverage`), and `extra_logits` leading logits.
    Anything else the model lacks, or a model variable the checkpoint lacks, is refused.
    With `other_classes`, a checkpoint of another class count is taken without its logits
    (fine-tuning to other classes; the model's classifier keeps its initial weights).

    Returns:
        `pretrained.LoadReport`.
    """
    prefix, reader = pretrained.open_checkpoint(prefix)

    def classify(name):
        last = name.rsplit('/', 1)[-1]
        if last in pretrained.SLOT_SUFFIXES:
            return f'*/{last}', 'optimizer slot or moving-average copy'
        if name in pretrained.TRAINING_STATE:
            return name, 'training state'
        return None

    variables = model.variables
    classes = int(reader.get_variable_to_shape_map()[LOGITS][0])
    if other_classes and classes - extra_logits != model.num_classes:
        classifier = {v.ref() for v in model.classifier.variables}
        variables = [v for v in variables if v.ref() not in classifier]
        base = classify

        def classify(name):  # pylint: disable=function-redefined
            group = base(name)
            if group is None and name.startswith(LOGITS_SCOPE + '/'):
                return f'{LOGITS_SCOPE}/*', (f'the classifier of {classes} classes; the model '
                                             f'has {model.num_classes}, trained from scratch')
            return group
        extra_logits = 0
    transforms = {}
    if extra_logits:
        drop = lambda value: value[..., extra_logits:]
        transforms = {f'{LOGITS_SCOPE}/weights': (drop, 'first logit left out'),
                      f'{LOGITS_SCOPE}/biases': (drop, 'first logit left out')}
    loaded, left_out = pretrained.assign_by_name(
        prefix, reader, variables, classify, 'variables', 'that are not its variables',
        transforms)
    if extra_logits:
        left_out += (pretrained.LeftOut(f'{LOGITS_SCOPE}[:{extra_logits}]',
                                        'the logit of the pixels the reference ignores', ()),)
    return pretrained.LoadReport(checkpoint=prefix, scope=model.variant.name, loaded=loaded,
                                 left_out=left_out, whole_network=True)
