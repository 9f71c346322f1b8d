"""Where a training run's first weights come from: its own last checkpoint (a resume), another
run's checkpoint (`--restore-from`, also into another class count: the classifier then starts
fresh), the slim ImageNet checkpoint (`--imagenet`, the backbone only), or nothing."""
import tensorflow as tf

from libs.runs import checkpoints
from libs.training import loss_scale as loss_scale_lib


def initialise(config, model, manager, log):
    """Resume the run, or start it from another run's weights or from ImageNet.

    Args:
        config: the run's `TrainConfig` (restore_from, imagenet, num_classes, num_layers).
        model: its `DeepLabV3`.
        manager: the `tf.train.CheckpointManager` of its snapshot dir, whose checkpoint holds the
            model, optimiser, global step (and loss scale).
        log: where the line saying where the weights come from goes.
    Returns:
        True when resuming this snapshot dir's own checkpoint.
    """
    if manager.latest_checkpoint:
        restored = manager.checkpoint
        if (getattr(restored, 'loss_scale', None) is not None
                and not loss_scale_lib.saved_in(manager.latest_checkpoint)):
            # A run trained in another precision has no loss scale: it starts afresh.
            restored = tf.train.Checkpoint(model=restored.model, optimizer=restored.optimizer,
                                           step=restored.step)
        restored.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        log(f'Resuming from {manager.latest_checkpoint} at step '
            f'{int(manager.checkpoint.step.numpy())}')
        return True
    if config.restore_from:
        prefix, source_step, source_classes = checkpoints.restore_model_weights(
            model, config.restore_from, other_classes=True)
        log(f'Starting from the weights of {prefix} (step {source_step} there); the global step '
            'and optimiser state start fresh')
        if source_classes != config.num_classes:
            log(f'The classifier starts fresh (random weights): {source_classes} classes there, '
                f'{config.num_classes} here; the backbone and ASPP are loaded')
    elif config.imagenet:
        from libs.nets.pretrained import load_slim_backbone
        log(load_slim_backbone(model.backbone, config.imagenet).summary())
    else:
        log(f'Starting from scratch (random weights): the paper starts from ImageNet weights, '
            f'pass --imagenet resnet_v1_{config.num_layers}.ckpt')
    return False
