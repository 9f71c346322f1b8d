"""Finding, describing and restoring this project's checkpoints.

Checkpoints are `tf.train.Checkpoint(model=..., optimizer=..., step=...)` written by a
`tf.train.CheckpointManager`. TensorFlow writes the data files under temporary names and renames
them, then rewrites the `checkpoint` state file atomically, so a process killed at any moment leaves
the last complete checkpoint as the latest one.
"""
import dataclasses
import os
import tempfile

import tensorflow as tf

import config as config_lib
from libs.nets.deeplabv3 import DeepLabV3
from libs.nets.resnet_v1 import UNITS_PER_BLOCK

_VALUE = '/.ATTRIBUTES/VARIABLE_VALUE'
# Convolutions outside the backbone: four ASPP branches, image pooling, projection, logits.
_HEAD_CONVS = 7
_SHORTCUT_CONVS = 4


def _depth_by_conv_count():
    return {1 + 3 * sum(units) + _SHORTCUT_CONVS + _HEAD_CONVS: depth
            for depth, units in UNITS_PER_BLOCK.items()}


def resolve_checkpoint(path):
    """A checkpoint prefix from a snapshot dir (its latest checkpoint), a folder holding one
    checkpoint without a state file (an unpacked tarball of the reference's model zoo), or a
    prefix.

    Raises:
        FileNotFoundError: naming the path, when it holds no checkpoint, or several and no
            `checkpoint` state file to choose.
    """
    if os.path.isdir(path):
        prefix = tf.train.latest_checkpoint(path)
        if prefix is None:
            prefixes = sorted(name[:-len('.index')] for name in os.listdir(path)
                              if name.endswith('.index'))
            if len(prefixes) != 1:
                raise FileNotFoundError(
                    f'{path} holds no checkpoint (no `checkpoint` state file' +
                    (f'; {len(prefixes)} checkpoints: {", ".join(prefixes[:3])}: pass one '
                     'prefix)' if prefixes else ')'))
            prefix = os.path.join(path, prefixes[0])
        return prefix
    if not os.path.isfile(path + '.index'):
        raise FileNotFoundError(
            f'{path} is neither a snapshot dir nor a checkpoint prefix ({path}.index is missing)')
    return path


def describe_checkpoint(prefix):
    """Reads the architecture a checkpoint was written by, from its variables alone.

    Returns:
        dict with `num_layers` (None if unrecognised), `num_classes` and `global_step` (None if
        the checkpoint has no step).
    """
    shapes = dict(tf.train.list_variables(prefix))
    kernels = [k for k in shapes if k.startswith('model/') and k.endswith('/kernel' + _VALUE)
               and '.OPTIMIZER_SLOT' not in k]
    bias = shapes.get('model/classifier/bias' + _VALUE)
    step = None
    if 'step' + _VALUE in shapes:
        step = int(tf.train.load_checkpoint(prefix).get_tensor('step' + _VALUE))
    return {'num_layers': _depth_by_conv_count().get(len(kernels)),
            'num_classes': bias[0] if bias else None,
            'global_step': step}


def saved_objects(prefix):
    """The names of the objects a checkpoint holds at its top level ('model', 'step', ...)."""
    return {name.split('/')[0] for name, _ in tf.train.list_variables(prefix)}


def model_checkpoint_shapes(model, root='model'):
    """The checkpoint key and shape of every variable of `model`, as
    `tf.train.Checkpoint(model=model)` writes them ('model/backbone/conv1/kernel/.ATTRIBUTES/
    VARIABLE_VALUE' -> [7, 7, 3, 64])."""
    shapes, seen = {}, set()

    def walk(obj, path):
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, tf.Variable):
            shapes[path + _VALUE] = obj.shape.as_list()
            return
        for name, child in tf.train.TrackableView(obj).children(obj).items():
            walk(child, f'{path}/{name}')

    walk(model, root)
    return shapes


def _first(names, shown=3):
    names = sorted(names)
    more = f' and {len(names) - shown} more' if len(names) > shown else ''
    return ', '.join(n.replace(_VALUE, '') for n in names[:shown]) + more


def check_compatible(prefix, model, other_classes=False):
    """Refuses a checkpoint written by another network, saying which part differs.

    Every model variable must be in the checkpoint with its shape, and every model tensor of the
    checkpoint must be one of the model's.

    Args:
        model: the `DeepLabV3` to restore into.
        other_classes: accept another class count (the classifier is then not restored).
    Returns:
        `describe_checkpoint(prefix)`.
    Raises:
        ValueError: e.g. "checkpoint X does not match the model: depth: checkpoint has 50 layers,
            model has 101", naming missing, unexpected or misshapen tensors.
    """
    found = describe_checkpoint(prefix)
    saved = {name: list(shape) for name, shape in tf.train.list_variables(prefix)
             if name.startswith('model/') and '.OPTIMIZER_SLOT' not in name}
    if not saved or found['num_classes'] is None:
        raise ValueError(f'checkpoint {prefix} is not a DeepLab checkpoint of this project '
                         '(no model with a classifier in it); a checkpoint of the reference '
                         'DeepLab (model.ckpt-N) is taken by --restore-from with no config.json '
                         'beside it')
    expected = model_checkpoint_shapes(model)
    problems = []
    depth = getattr(model.backbone, 'depth', None)
    if (found['num_layers'] is not None and model.variant.name == f'resnet_v1_{depth}'
            and found['num_layers'] != depth):
        problems.append(f"depth: checkpoint has {found['num_layers']} layers, model has {depth}")
    if found['num_classes'] != model.num_classes and not other_classes:
        problems.append(f"classes: checkpoint has {found['num_classes']}, model has "
                        f'{model.num_classes}')
    if not problems:
        classifier = lambda name: name.startswith('model/classifier/')
        missing = [n for n in expected if n not in saved and not classifier(n)]
        extra = [n for n in saved if n not in expected and not classifier(n)]
        misshapen = [f'{n.replace(_VALUE, "")} (checkpoint {saved[n]}, model {expected[n]})'
                     for n in expected if n in saved and saved[n] != expected[n]
                     and not classifier(n)]
        if missing:
            problems.append(f'{len(missing)} model tensors missing: {_first(missing)}')
        if extra:
            problems.append(f'{len(extra)} tensors the model does not have: {_first(extra)}')
        if misshapen:
            problems.append(f'{len(misshapen)} of another shape: {"; ".join(misshapen[:3])}')
    if problems:
        raise ValueError(f'checkpoint {prefix} does not match the model '
                         f'({model.variant.name}): ' + '; '.join(problems))
    return found


def restore_model_weights(model, path, other_classes=False):
    """Loads the model's weights from a checkpoint (no optimiser state, no step).

    Args:
        model: a `DeepLabV3`.
        path: a snapshot dir or a checkpoint prefix.
        other_classes: a checkpoint with another class count is accepted: everything but the
            classifier is loaded (backbone, ASPP, decoder), and the classifier keeps its initial
            weights. This is fine-tuning a model to other classes (e.g. VOC's 21 to 19).
    Returns:
        (prefix, the checkpoint's global step or None, the checkpoint's class count).
    Raises:
        ValueError: when the checkpoint was written for another network, or another class count
            without `other_classes`.
    """
    prefix = resolve_checkpoint(path)
    found = check_compatible(prefix, model, other_classes)
    if found['num_classes'] == model.num_classes:
        status = tf.train.Checkpoint(model=model).read(prefix)
    else:
        # The same object graph without the classifier: the checkpoint's classifier (and the
        # rest of the checkpoint: optimiser, step) is left unread.
        parts = {name: getattr(model, name) for name in ('backbone', 'aspp', 'decoder')
                 if getattr(model, name, None) is not None}
        status = tf.train.Checkpoint(model=tf.train.Checkpoint(**parts)).read(prefix)
    status.assert_existing_objects_matched().expect_partial()
    return prefix, found['global_step'], found['num_classes']


def write_and_discard(checkpoint):
    """Writes `checkpoint` to a temporary folder and deletes it: what a worker of a
    `MultiWorkerMirroredStrategy` run that does not write the snapshot dir does at each save.

    Saving reads batch norm's synchronised-on-read statistics through an all-reduce over every
    worker, so every worker must save when the chief does.
    """
    with tempfile.TemporaryDirectory(prefix='deeplab-discarded-checkpoint-') as folder:
        checkpoint.write(os.path.join(folder, 'checkpoint'))


def build_model(config, num_replicas=1):
    """The `DeepLabV3` of a `TrainConfig`. Batch norm is synchronised only when there is more than
    one replica to synchronise."""
    return DeepLabV3(num_classes=config.num_classes, depth=config.num_layers,
                     output_stride=config.output_stride, multi_grid=config.multi_grid,
                     freeze_bn=config.freeze_bn, sync_bn=config.sync_bn and num_replicas > 1,
                     bn_decay=config.bn_decay, seed=config.random_seed,
                     model_variant=config.variant_name, depth_multiplier=config.depth_multiplier,
                     atrous_rates=config.atrous_rates, aspp_separable=config.aspp_separable,
                     decoder_output_stride=config.decoder_output_stride,
                     aspp_pooling_first=config.aspp_pooling_first,
                     depth_divisor=config.depth_divisor,
                     dropout_keep_prob=config.dropout_keep_prob)


def load_trained_model(path, output_stride=None, reference=None, log=print):
    """The model of a training run, or a published checkpoint of the reference DeepLab, with its
    weights, for evaluation, prediction and export.

    The architecture comes from the run's `config.json`, so a user never repeats it; a reference
    checkpoint (no config.json beside it) tells it by its variable names and shapes
    (`published.py`).

    Args:
        path: a snapshot dir (its latest checkpoint) or a checkpoint prefix inside one; or a
            reference checkpoint prefix (`.../model.ckpt-30000`) or the folder holding it.
        output_stride: overrides the run's output stride (the weights do not depend on it); a
            reference checkpoint runs at 16 by default.
        reference: for a reference checkpoint, keyword arguments of
            `published.reference_config` (dataset, atrous_rates, decoder_output_stride).
        log: where what was read from a reference checkpoint is reported.
    Returns:
        (model, config, checkpoint prefix, global step or None).
    Raises:
        FileNotFoundError: no checkpoint, or a checkpoint of neither kind, at `path`.
        ValueError: the checkpoint does not fit the run's architecture.
    """
    from libs.runs import published
    prefix = resolve_checkpoint(path)
    if not os.path.isfile(os.path.join(config_lib.run_dir_of(prefix), config_lib.CONFIG_FILE)) \
            and published.is_reference_checkpoint(prefix):
        run_config, dataset = published.reference_config(
            prefix, output_stride=output_stride or 16, log=log, **(reference or {}))
        model = build_model(run_config)
        log(published.load_reference_weights(model, prefix, dataset.extra_logits).summary())
        step = published.global_step(prefix)
        return model, run_config, prefix, step
    run_config = config_lib.load_run_config(prefix)
    if output_stride:
        run_config = dataclasses.replace(run_config, output_stride=output_stride)
    model = build_model(run_config)
    prefix, step, _ = restore_model_weights(model, prefix)
    return model, run_config, prefix, step
