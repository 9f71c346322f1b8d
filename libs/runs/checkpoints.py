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
    """A checkpoint prefix from a snapshot dir (its latest checkpoint) or a prefix.

    Raises:
        FileNotFoundError: naming the path, when it holds no checkpoint.
    """
    if os.path.isdir(path):
        prefix = tf.train.latest_checkpoint(path)
        if prefix is None:
            raise FileNotFoundError(f'{path} holds no checkpoint (no `checkpoint` state file)')
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


def check_compatible(prefix, num_layers, num_classes, other_classes=False):
    """Refuses a checkpoint written by another architecture, saying which part differs.

    Args:
        other_classes: accept another class count (the classifier is then not restored).

    Raises:
        ValueError: e.g. "checkpoint X is ResNet-50 with 21 classes, the model is ResNet-101 ...".
    """
    found = describe_checkpoint(prefix)
    if found['num_layers'] is None or found['num_classes'] is None:
        raise ValueError(f'checkpoint {prefix} is not a DeepLabV3 checkpoint of this project '
                         '(no ResNet backbone or classifier in it)')
    problems = []
    if found['num_layers'] != num_layers:
        problems.append(f"depth: checkpoint has {found['num_layers']} layers, "
                        f'model has {num_layers}')
    if found['num_classes'] != num_classes and not other_classes:
        problems.append(f"classes: checkpoint has {found['num_classes']}, model has {num_classes}")
    if problems:
        raise ValueError(f'checkpoint {prefix} does not match the model: ' + '; '.join(problems))
    return found


def restore_model_weights(model, path, other_classes=False):
    """Loads the model's weights from a checkpoint (no optimiser state, no step).

    Args:
        model: a `DeepLabV3`.
        path: a snapshot dir or a checkpoint prefix.
        other_classes: a checkpoint with another class count is accepted: everything but the
            classifier is loaded (backbone and ASPP), and the classifier keeps its initial
            weights. This is fine-tuning a model to other classes (e.g. VOC's 21 to 19).
    Returns:
        (prefix, the checkpoint's global step or None, the checkpoint's class count).
    Raises:
        ValueError: when the checkpoint was written for another depth, or another class count
            without `other_classes`.
    """
    prefix = resolve_checkpoint(path)
    found = check_compatible(prefix, model.backbone.depth, model.num_classes, other_classes)
    if found['num_classes'] == model.num_classes:
        status = tf.train.Checkpoint(model=model).read(prefix)
    else:
        # The same object graph without the classifier: the checkpoint's classifier (and the
        # rest of the checkpoint: optimiser, step) is left unread.
        status = tf.train.Checkpoint(model=tf.train.Checkpoint(
            backbone=model.backbone, aspp=model.aspp)).read(prefix)
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
                     bn_decay=config.bn_decay, seed=config.random_seed)


def load_trained_model(path, output_stride=None):
    """The model of a training run, with its weights, for evaluation, prediction and export.

    The architecture comes from the run's `config.json`, so a user never repeats it.

    Args:
        path: a snapshot dir (its latest checkpoint) or a checkpoint prefix inside one.
        output_stride: overrides the run's output stride (the weights do not depend on it).
    Returns:
        (model, config, checkpoint prefix, global step or None).
    Raises:
        FileNotFoundError: no checkpoint or no config.json at `path`.
        ValueError: the checkpoint does not fit the run's architecture.
    """
    prefix = resolve_checkpoint(path)
    run_config = config_lib.load_run_config(prefix)
    if output_stride:
        run_config = dataclasses.replace(run_config, output_stride=output_stride)
    model = build_model(run_config)
    prefix, step, _ = restore_model_weights(model, prefix)
    return model, run_config, prefix, step
