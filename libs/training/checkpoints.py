"""Finding, describing and restoring this project's checkpoints.

Checkpoints are `tf.train.Checkpoint(model=..., optimizer=..., step=...)` written by a
`tf.train.CheckpointManager`. TensorFlow writes the data files under temporary names and renames
them, then rewrites the `checkpoint` state file atomically, so a process killed at any moment leaves
the last complete checkpoint as the latest one.
"""
import os

import tensorflow as tf

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


def check_compatible(prefix, num_layers, num_classes):
    """Refuses a checkpoint written by another architecture, saying which part differs.

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
    if found['num_classes'] != num_classes:
        problems.append(f"classes: checkpoint has {found['num_classes']}, model has {num_classes}")
    if problems:
        raise ValueError(f'checkpoint {prefix} does not match the model: ' + '; '.join(problems))
    return found


def restore_model_weights(model, path):
    """Loads the model's weights from a checkpoint (no optimiser state, no step).

    Args:
        model: a `DeepLabV3`.
        path: a snapshot dir or a checkpoint prefix.
    Returns:
        (prefix, the checkpoint's global step or None).
    Raises:
        ValueError: when the checkpoint was written for another depth or class count.
    """
    prefix = resolve_checkpoint(path)
    found = check_compatible(prefix, model.backbone.depth, model.num_classes)
    status = tf.train.Checkpoint(model=model).read(prefix)
    status.assert_existing_objects_matched().expect_partial()
    return prefix, found['global_step']
