"""The training step (paper, section 4.1), written once for every strategy.

Forward at the training output stride, logits upsampled to the label, softmax cross-entropy with 255
ignored (each pixel weighted by its class with --class-weights) plus weight decay, momentum SGD
with a poly learning rate. The loss of a step is normalised by the summed weights of the valid
pixels of the whole global batch (their count without class weights), so N replicas compute
exactly the gradient of one device given the whole batch.
"""
import re

import tensorflow as tf

from libs.evaluation.metrics import confusion_matrix
from libs.nets.dropout import step_seed
from libs.training.loss_scale import unscaled_gradients
from libs.training.losses import masked_cross_entropy_sum, weight_decay_loss
from libs.training.schedules import poly_learning_rate
from libs.utils.precision import compute_dtype


# Tags the assertion of `check_labels` so that `describe_label_error` can tell it from others.
_LABEL_ERROR = 'label outside the model classes:'
_LABEL_ERROR_RE = re.compile(re.escape(_LABEL_ERROR) + r'\]\s*\[(-?\d+)\]')


def check_labels(labels, num_classes, ignore_label):
    """`labels`, after an assertion that each is in 0..num_classes-1 or is `ignore_label`.

    A label the model has no class for would otherwise reach the loss as a raw TensorFlow error
    (or, in the confusion matrix, be dropped silently).

    Args:
        labels: int32 [B, H, W].
    Returns:
        `labels`, [B, H, W], to be used in its place (it carries the assertion).
    """
    outside = tf.logical_and(tf.not_equal(labels, ignore_label),
                             tf.logical_or(labels < 0, labels >= num_classes))
    worst = tf.reduce_max(tf.where(outside, tf.abs(labels), -1))
    check = tf.debugging.Assert(worst < 0, [_LABEL_ERROR, worst], summarize=1)
    with tf.control_dependencies([check]):
        return tf.identity(labels)


def describe_label_error(error, config):
    """The one-line message for the `InvalidArgumentError` of `check_labels`, else None."""
    match = _LABEL_ERROR_RE.search(str(error))
    if match is None:
        return None
    return (f'the records of split {config.split_name!r} in {config.data_dir} hold label '
            f'{match[1]}, but the model has --num-classes {config.num_classes} (labels 0..'
            f'{config.num_classes - 1}, and --ignore-label {config.ignore_label}): give the '
            'class count the records were converted with')


def build_optimizer(config, global_step, model):
    """Momentum SGD with the poly learning rate of `global_step`, with the momentum slots of
    `model`'s trainable variables (those `build_train_step` updates) already created.

    The TF1 optimiser works on `tf.Module` variables under the default, mirrored and
    parameter-server strategies alike (a Keras 3 optimiser does not under MirroredStrategy).
    Create it under the strategy's scope. It would create its slots in the first
    `apply_gradients`, inside the step's `tf.function`, and a function that creates variables
    is traced twice; created here, the step is traced once (docs/performance.md, "Start-up").

    Args:
        config: `TrainConfig` (learning_rate, num_steps, power, momentum).
        global_step: int64 variable.
        model: the `DeepLabV3` it will train.
    """
    optimizer = tf.compat.v1.train.MomentumOptimizer(
        learning_rate=lambda: poly_learning_rate(global_step, config.learning_rate,
                                                 config.num_steps, config.power),
        momentum=config.momentum)
    # What `apply_gradients` does first (cross-replica context, eagerly); a slot that exists is
    # not created again, and a checkpoint restores into it as into one created later.
    optimizer._create_slots(list(model.trainable_variables))
    return optimizer


def split_over_replicas(strategy, batch):
    """Per-replica values of a global batch: replica k takes the k-th of N equal slices.

    Args:
        strategy: the default strategy, `MirroredStrategy`, or `MultiWorkerMirroredStrategy`
            (whose replica ids count over every worker: each worker keeps its replicas' slices).
        batch: tuple of tensors [B, ...], B divisible by the replica count.
    Returns:
        `batch` itself with one replica, otherwise a tuple of per-replica values [B / N, ...].
    """
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        return batch
    with tf.device('/cpu:0'):
        parts = [tf.split(tensor, replicas) for tensor in batch]
    return tuple(strategy.experimental_distribute_values_from_function(
        lambda context, slices=slices: slices[context.replica_id_in_sync_group])
        for slices in parts)


def build_train_step(model, optimizer, global_step, strategy, config, loss_scale=None):
    """A `tf.function(iterator, limit=None) -> (loss, confusion)` that takes one batch and applies
    one update.

    The iterator yields either global batches (a plain `tf.data` iterator; the step splits each
    over the replicas with `split_over_replicas`) or per-replica values (a distributed dataset's
    iterator, as `ParameterServerStrategy`'s per-worker datasets). The training loop gives local
    strategies a plain iterator: a live distributed dataset (its MultiDeviceIterator) slows every
    step on CPU, even while idle (docs/performance.md).

    The network computes in `config.precision`: the images are cast to it, and each layer casts
    its float32 variables to it where it uses them, so their gradients come back float32. The
    logits' upsampling (ResizeBilinear returns float32), the loss, softmax and confusion matrix
    are float32.

    With `loss_scale` (float16 training) the gradients are those of the loss times its scale,
    divided by it again (`loss_scale.unscaled_gradients`). The update is skipped when any
    replica's gradient or loss is not finite: the replicas' non-finite counts are summed (an
    all-reduce), and one verdict, taken outside the replicas, applies the update on all of them
    or on none. A skipped step leaves the weights, the momentum and the global step unchanged;
    `loss_scale.update` halves the scale then (and grows it after enough finite steps). Its loss
    and confusion matrix are still returned.

    With `limit` (an int64 scalar tensor) the step runs only while `global_step < limit` and
    returns `(loss, confusion, applied)`; a skipped step returns a zero loss and confusion and
    `applied` False. This guards asynchronous training: the coordinator runs a step again when the
    worker that ran it was lost, even if that worker had applied its update, so the loop passes
    the step it is aiming for and a repeated step beyond it changes nothing. (The condition
    wraps `strategy.run`: a synchronisation point such as `apply_gradients` may not sit inside
    control flow in the replica function.)

    Args:
        model: `DeepLabV3`.
        optimizer: from `build_optimizer`.
        global_step: int64 variable, incremented once per applied update.
        strategy: the strategy the model was created under.
        config: `TrainConfig` (num_classes, ignore_label, class_weight_values, weight_decay,
            precision, random_seed: with the global step, the seed of the step's dropout).
        loss_scale: a `loss_scale.DynamicLossScale` created under `strategy`'s scope, or None.
    Returns:
        The step function. Its outputs are the global batch's loss (scalar float32, weight decay
        included) and its confusion matrix (int64 [C, C]) of the training predictions.
    Raises:
        ValueError: float16 without a GPU (`precision.compute_dtype`).
    """
    dtype = compute_dtype(config.precision)

    def step_fn(images, labels):
        replica = tf.distribute.get_replica_context()
        labels = check_labels(labels, config.num_classes, config.ignore_label)
        images = tf.cast(images, dtype)
        # Read before this step's update: the masks of step N are those of a run resumed at N.
        dropout_seed = (step_seed(config.random_seed, global_step)
                        if model.dropout_keep_prob < 1.0 else None)
        with tf.GradientTape() as tape:
            logits = model(images, training=True, dropout_seed=dropout_seed,
                           replica=(replica.replica_id_in_sync_group,
                                    replica.num_replicas_in_sync))
            loss_sum, weight_sum, logits = masked_cross_entropy_sum(
                logits, labels, config.ignore_label, config.class_weight_values)
            global_weight = replica.all_reduce(tf.distribute.ReduceOp.SUM, weight_sum)
            loss = (tf.math.divide_no_nan(loss_sum, global_weight)
                    + weight_decay_loss(model.regularized_variables, config.weight_decay)
                    / replica.num_replicas_in_sync)
        variables = model.trainable_variables
        predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
        confusion = confusion_matrix(labels, predictions, config.num_classes, config.ignore_label)
        if loss_scale is not None:
            return (loss, confusion) + unscaled_gradients(tape, loss, variables, loss_scale)
        gradients = tape.gradient(loss, variables)
        apply(gradients)
        return loss, confusion

    def apply(gradients):
        # The v1 optimiser sums gradients over replicas: each already carries its share.
        optimizer.apply_gradients(zip(gradients, model.trainable_variables),
                                  global_step=global_step)

    def run(images, labels):
        if loss_scale is None:
            loss, confusion = strategy.run(step_fn, args=(images, labels))
        else:
            loss, confusion, gradients, non_finite = strategy.run(step_fn, args=(images, labels))
            # One verdict for every replica, after summing their counts.
            finite = tf.equal(strategy.reduce(tf.distribute.ReduceOp.SUM, non_finite, axis=None),
                              0)

            def update():
                strategy.run(apply, args=(gradients,))
                return tf.constant(True)

            tf.cond(finite, update, lambda: tf.constant(False))
            loss_scale.update(finite)
        return (strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.SUM, confusion, axis=None))

    def skip():
        return (tf.constant(0.0), tf.zeros([config.num_classes] * 2, tf.int64),
                tf.constant(False))

    # Without autograph: the step's conditions are explicit `tf.cond`s (a tensor used as a Python
    # bool fails the trace loudly), and converting the network's ~570 functions cost seconds of
    # every trace (docs/performance.md, "Start-up").
    @tf.function(autograph=False)
    def train_step(iterator, limit=None):
        images, labels = next(iterator)
        if isinstance(images, tf.Tensor):
            images, labels = split_over_replicas(strategy, (images, labels))
        if limit is None:
            return run(images, labels)
        return tf.cond(global_step < limit, lambda: run(images, labels) + (tf.constant(True),),
                       skip)

    return train_step
