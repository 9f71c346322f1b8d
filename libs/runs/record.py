"""What a run records in its folder and checks before it trains: the class count and names its
records describe, and its `config.json`, against which a resume may change only
`config.RESUMABLE_CHANGES`."""
import dataclasses
import os

import tensorflow as tf

import config as config_lib
from libs.datasets import class_weights, description, voc


# Recorded values that no flag sets, described by what they come from.
_DERIVED = {'class_weight_values': 'the class weights (--class-weights {0.class_weights} of the '
                                   "records' pixel counts)",
            'class_names': "the records' class names (dataset.json)",
            'class_colors': "the records' class colours (dataset.json)"}


def _describe_change(previous, config, name):
    if name in _DERIVED:
        what, verb = _DERIVED[name].format(config), 'were'
    else:
        what, verb = f'--{name.replace("_", "-")}', 'was'
    return f'{what} {verb} {getattr(previous, name)}, now {getattr(config, name)}'


def _describe_changes(previous, config, names):
    return '; '.join(_describe_change(previous, config, name) for name in names)


def with_recorded_layout(config):
    """`config` with the snapshot dir's recorded ASPP concatenation order, which no flag sets: a
    resumed run recorded before the reference's order was adopted keeps its own (its projection
    weights were trained on it). Unchanged when the snapshot dir holds no run."""
    path = os.path.join(config.snapshot_dir, config_lib.CONFIG_FILE)
    if not (os.path.isfile(path) and tf.train.latest_checkpoint(config.snapshot_dir)):
        return config
    previous = config_lib.load_run_config(config.snapshot_dir)
    return dataclasses.replace(config, aspp_pooling_first=previous.aspp_pooling_first)


def check_snapshot_dir(config):
    """Refuses to resume a snapshot dir whose checkpoints were trained otherwise.

    A resume may change only `config.RESUMABLE_CHANGES` (e.g. --num-steps, --log-every); another
    architecture, or another learning rate, crop, seed..., belongs in a new snapshot dir (which
    can start from this one's weights with --restore-from).

    Returns:
        The names of the changed resumable fields (empty when starting fresh).
    Raises:
        ValueError: naming each refused field with its recorded and new value.
    """
    path = os.path.join(config.snapshot_dir, config_lib.CONFIG_FILE)
    if not (os.path.isfile(path) and tf.train.latest_checkpoint(config.snapshot_dir)):
        return []
    previous = config_lib.load_run_config(config.snapshot_dir)
    if previous.class_names is None:  # recorded before runs recorded their class names
        previous = dataclasses.replace(previous, class_names=config.class_names)
    if previous.class_colors is None:  # recorded before runs recorded their colours
        previous = dataclasses.replace(previous, class_colors=config.class_colors)
    changed = [f.name for f in dataclasses.fields(config)
               if getattr(previous, f.name) != getattr(config, f.name)]
    architecture = [name for name in changed if name in config_lib.ARCHITECTURE_FIELDS]
    if architecture:
        raise ValueError(f'{config.snapshot_dir} holds checkpoints of another model ('
                         + _describe_changes(previous, config, architecture)
                         + '): use another --snapshot-dir')
    refused = [name for name in changed if name not in config_lib.RESUMABLE_CHANGES]
    if refused:
        raise ValueError(
            f'{config.snapshot_dir} holds a run trained with other settings ('
            + _describe_changes(previous, config, refused) + '): resume it with the recorded '
            f'values, or train in another --snapshot-dir (--restore-from {config.snapshot_dir} '
            'starts from its weights)')
    return changed


def with_dataset_classes(config, train_files, val_files, log):
    """`config` with the class count, names, colours and ignore label of its records'
    `dataset.json`, and the class weights `--class-weights` gives.

    The shards of the training and validation splits are checked against the description. A
    `--num-classes` that contradicts the records is refused; records converted before
    descriptions existed are taken as VOC's 21 classes (or `--num-classes`) in VOC's colours,
    and the first lines say so.

    Raises:
        ValueError: naming both class counts, shards that changed after conversion, or class
            weights that cannot be had (`class_weights.resolve_class_weights`).
    """
    dataset = description.read_description(config.data_dir)
    if dataset is None:
        log(f'{config.data_dir} has no {description.DESCRIPTION_FILE} (converted by an earlier '
            f'version): taking {config.num_classes or 21} classes'
            + ('' if config.num_classes else " (VOC's; --num-classes sets another count)"))
        num_classes = config.num_classes or 21
        weights = class_weights.resolve_class_weights(
            config.class_weights, num_classes, None, config.data_dir)
        return dataclasses.replace(config, num_classes=num_classes,
                                   class_colors=voc.dataset(num_classes).palette,
                                   class_weight_values=weights)
    info = description.check_split(dataset, config.data_dir, config.split_name, train_files)
    if val_files:
        description.check_split(dataset, config.data_dir, config.val_split, val_files)
    if config.num_classes not in (None, dataset.num_classes):
        raise ValueError(f'--num-classes {config.num_classes} contradicts the records: '
                         f'{config.data_dir} holds {dataset.name} with {dataset.num_classes} '
                         'classes (leave --num-classes out to take theirs)')
    if config.ignore_label != dataset.ignore_label:
        raise ValueError(f'--ignore-label {config.ignore_label} contradicts the records: '
                         f'{dataset.name} ignores {dataset.ignore_label}')
    weights = class_weights.resolve_class_weights(
        config.class_weights, dataset.num_classes, info.class_pixels,
        f'{description.description_path(config.data_dir)}, split {config.split_name}')
    return dataclasses.replace(config, num_classes=dataset.num_classes,
                               class_names=dataset.class_names, class_colors=dataset.palette,
                               class_weight_values=weights)
