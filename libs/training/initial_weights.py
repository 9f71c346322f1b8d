"""A training run's checkpoint, and where its first weights come from: its own last checkpoint (a
resume), another run's checkpoint (`--restore-from`, also into another class count: the
classifier then starts fresh), the slim ImageNet checkpoint (`--imagenet`, the backbone only), or
nothing."""
import tensorflow as tf

from libs.runs import checkpoints, published

# What a resumed checkpoint may lack: the loss scale (the run trained in float32 or bfloat16),
# the count of batches taken (parameter-server training, or written before it was counted).
OPTIONAL_ENTRIES = ('loss_scale', 'batches_taken')


def run_checkpoint(model, optimizer, step, loss_scale=None, counts_batches=True):
    """The checkpoint a run saves: model, optimiser, global step, and what of `OPTIONAL_ENTRIES`
    it has.

    Args:
        model, optimizer, step: the run's `DeepLabV3`, optimiser and global step variable.
        loss_scale: its `loss_scale.DynamicLossScale`, or None.
        counts_batches: whether the run counts the batches it takes (one per step, applied or
            skipped), where a resume continues its stream. Parameter-server workers draw their
            own orders, so there is nothing to count there.
    Returns:
        (`tf.train.Checkpoint`, the int64 `batches_taken` variable or None).
    """
    batches_taken = (tf.Variable(0, dtype=tf.int64, trainable=False, name='batches_taken')
                     if counts_batches else None)
    optional = {'loss_scale': loss_scale, 'batches_taken': batches_taken}
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step,
                                     **{name: value for name, value in optional.items()
                                        if value is not None})
    return checkpoint, batches_taken


def initialise(config, model, manager, log):
    """Resume the run, or start it from another run's weights or from ImageNet.

    Args:
        config: the run's `TrainConfig` (restore_from, imagenet, num_classes, num_layers).
        model: its `DeepLabV3`.
        manager: the `tf.train.CheckpointManager` of its snapshot dir, whose checkpoint holds the
            model, optimiser, global step (and `OPTIONAL_ENTRIES`). A resumed checkpoint without
            the loss scale leaves it at its initial value; without the count of batches taken,
            the count is the global step.
        log: where the line saying where the weights come from goes.
    Returns:
        True when resuming this snapshot dir's own checkpoint.
    """
    if manager.latest_checkpoint:
        prefix, live = manager.latest_checkpoint, manager.checkpoint
        saved = checkpoints.saved_objects(prefix)
        missing = [name for name in OPTIONAL_ENTRIES
                   if getattr(live, name, None) is not None and name not in saved]
        kept = {name: getattr(live, name) for name in ('model', 'optimizer', 'step')
                + OPTIONAL_ENTRIES if getattr(live, name, None) is not None
                and name not in missing}
        restored = tf.train.Checkpoint(**kept) if missing else live
        restored.restore(prefix).assert_existing_objects_matched()
        step = int(live.step.numpy())
        log(f'Resuming from {prefix} at step {step}')
        if 'loss_scale' in missing:
            log(f'{prefix} holds no loss scale (trained without one): it starts at '
                f'{float(live.loss_scale.scale.numpy()):g}')
        if 'batches_taken' in missing:
            live.batches_taken.assign(step)
        return True
    if config.restore_from and published.is_reference_checkpoint(
            checkpoints.resolve_checkpoint(config.restore_from)):
        prefix = checkpoints.resolve_checkpoint(config.restore_from)
        log(published.load_reference_weights(
            model, prefix, published.extra_logits_for(config.class_names, prefix),
            other_classes=True).summary())
        log('Starting from the weights of the reference checkpoint; the global step and '
            'optimiser state start fresh')
    elif config.restore_from:
        prefix, source_step, source_classes = checkpoints.restore_model_weights(
            model, config.restore_from, other_classes=True)
        log(f'Starting from the weights of {prefix} (step {source_step} there); the global step '
            'and optimiser state start fresh')
        if source_classes != config.num_classes:
            log(f'The classifier starts fresh (random weights): {source_classes} classes there, '
                f'{config.num_classes} here; the backbone and ASPP are loaded')
    elif config.imagenet:
        from libs.nets.pretrained import load_slim_backbone
        log(load_slim_backbone(model.backbone, config.imagenet, scope=model.variant.scope,
                               classifier=dict(model.variant.imagenet_left_out)).summary())
    else:
        log(f'Starting from scratch (random weights): the paper starts from ImageNet weights, '
            f'pass --imagenet {model.variant.imagenet}')
    return False
