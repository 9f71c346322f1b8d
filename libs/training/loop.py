"""The one training loop. It runs under the default strategy (train.py), `MirroredStrategy`
(train_multi_gpu.py), `ParameterServerStrategy` with a `ClusterCoordinator` and
`MultiWorkerMirroredStrategy` (train_distributed.py --mode async|sync); the scripts only choose
the strategy. Under the parameter-server strategy the chief keeps a queue of steps in flight on
the workers (`step_queue.py`), takes their results as they complete and validates on a thread
(`background_validation.py`).

It restores or initialises the model, runs the step of `step.py` until the global step reaches
`num_steps`, logs, checkpoints and validates.
"""
import dataclasses
import math
import os
import time
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

import config as config_lib
from libs.datasets import input_pipeline, tfrecord
from libs.nets import variants
from libs.datasets.class_weights import format_class_weights
from libs.evaluation.metrics import iou_from_confusion
from libs.runs import checkpoints, record
from libs.evaluation.prediction import class_names_of
from libs.training import loss_scale as loss_scale_lib
from libs.training import summaries
from libs.training.schedules import poly_learning_rate
from libs.training.background_validation import BackgroundValidation
from libs.training.initial_weights import initialise, run_checkpoint
from libs.training.step import build_optimizer, build_train_step
from libs.training.step_queue import StepQueue

CHECKPOINT_NAME = 'model'


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


class Stopped(RuntimeError):
    """A worker asked the run to stop (SIGTERM); the checkpoint of the step it stopped at was
    saved.

    Attributes:
        step: the global step of that checkpoint.
        checkpoint: its prefix (None on a worker that does not write).
    """

    def __init__(self, step, checkpoint):
        super().__init__(f'stopped at step {step}')
        self.step, self.checkpoint = step, checkpoint


@dataclasses.dataclass
class TrainResult:
    global_step: int
    checkpoint: Optional[str]
    loss: Optional[float]
    val_miou: Optional[float]


@tf.function(autograph=False)
def _all_finite(variables):
    """Whether every value of every float variable is finite: checked before each save, since a
    step's loss is computed before its update and cannot vouch for the weights it leaves."""
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in variables
                          if v.dtype.is_floating])


def make_deterministic():
    """Deterministic ops, one op at a time: the same seed and data then give the same weights.

    Process-wide and final. Op determinism alone is not enough on CPU: with several inter-op
    threads, independent ops may still run in another order and round differently, and
    from-scratch training amplifies last-bit differences within a few steps (the measurements
    are in docs/performance.md).

    Raises:
        ValueError: TensorFlow already runs with several inter-op threads and has initialised
            (call `tf.config.threading.set_inter_op_parallelism_threads(1)` before using it).
    """
    tf.config.experimental.enable_op_determinism()
    if tf.config.threading.get_inter_op_parallelism_threads() == 1:
        return
    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        raise ValueError(
            '--deterministic needs one inter-op thread, and TensorFlow was initialised with '
            'more; call tf.config.threading.set_inter_op_parallelism_threads(1) before using '
            'TensorFlow in this process') from None


def _steps(first, last):
    """'step 5', or 'one of steps 3-5' when a range is all that is known."""
    return f'step {last}' if first == last else f'one of steps {first}-{last}'


def _crossed(previous, current, every):
    """Whether a multiple of `every` lies in (previous, current]."""
    return current // every > previous // every


def _next_save(current, config):
    """The next step at which the loop checkpoints (or the last step)."""
    return min((current // config.save_pred_every + 1) * config.save_pred_every,
               config.num_steps)


def _per_worker_seed(seed):
    """`seed` plus the microseconds of this worker's clock, an int64 scalar tensor."""
    micros = tf.cast(tf.timestamp() * 1e6, tf.int64) % (2 ** 31)
    return tf.constant(seed, tf.int64) + micros


def train(config, strategy=None, coordinator=None, log: Callable[[str], None] = print,
          writes=True, stop: Optional[Callable[[], bool]] = None, loss_scale=None):
    """Trains `config` under `strategy` until the global step reaches `config.num_steps`.

    A run resumed from its snapshot dir's checkpoint continues the input stream with the batches
    the uninterrupted run took from there on (default and mirrored strategies; the
    parameter-server workers draw new orders): the checkpoint counts the batches taken, which
    skipped float16 steps take too. `<snapshot_dir>/config.json` is written when the
    run starts fresh and never rewritten (see `record.check_snapshot_dir`).

    Args:
        config: a `config.TrainConfig`.
        strategy: a `tf.distribute` strategy; the default strategy when None.
        coordinator: a `ClusterCoordinator` for `ParameterServerStrategy`; steps are then
            scheduled asynchronously on the workers.
        log: where progress lines go (only the process running this loop logs).
        writes: whether this process writes the snapshot dir (config.json, checkpoints,
            TensorBoard). Under `MultiWorkerMirroredStrategy` only worker 0 does; the others
            still take part in every save, since reading batch norm's synchronised-on-read
            statistics is an all-reduce over every worker, and discard what they saved.
        stop: called after every step; True saves a checkpoint of that step and raises
            `Stopped`. Under `MultiWorkerMirroredStrategy` every worker must get the same
            answer after the same step (`multi_worker.StopSignal`).
        loss_scale: a `loss_scale.DynamicLossScale`, created under `strategy`'s scope, to train
            with whatever the precision. None: float16 creates one that starts at 2^15, the
            other precisions train unscaled. With float32 compute it runs float16's path (skipped
            steps, the scale in the checkpoint, the divergence stop) where float16 cannot train:
            TensorFlow's CPU kernels have no float16 gradient of an atrous convolution.
    Returns:
        `TrainResult`.
    Raises:
        TrainingDiverged: when the loss is NaN or Inf; the message names the step.
        Stopped: `stop` returned True.
        ValueError: a batch that does not split over the replicas, a snapshot dir whose run
            had another architecture or settings that a resume may not change.
    """
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(f'--batch-size {config.batch_size} does not split evenly over '
                         f'{replicas} replicas')
    if config.deterministic:
        make_deterministic()
    train_files = tfrecord.list_shards(config.data_dir, config.split_name)
    val_files = (tfrecord.list_shards(config.data_dir, config.val_split)
                 if config.val_split else None)
    config = record.with_dataset_classes(config, train_files, val_files, log)
    config = config_lib.resolve_network(record.with_recorded_layout(config))
    changed = record.check_snapshot_dir(config)
    if config.class_weight_values is not None:
        log(format_class_weights(config.class_weights, class_names_of(config),
                                 config.class_weight_values))
    tf.random.set_seed(config.random_seed)

    with strategy.scope():
        model = checkpoints.build_model(config, replicas)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name='global_step',
                           aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        optimizer = build_optimizer(config, step, model)
        if loss_scale is None and config.precision == 'float16':
            # float16 gradients need loss scaling; bfloat16 has float32's range and needs none.
            loss_scale = loss_scale_lib.DynamicLossScale()
    checkpoint, batches_taken = run_checkpoint(model, optimizer, step, loss_scale,
                                               counts_batches=coordinator is None)
    manager = tf.train.CheckpointManager(checkpoint, config.snapshot_dir, config.max_to_keep,
                                         checkpoint_name=CHECKPOINT_NAME)
    resuming = initialise(config, model, manager, log)
    start_step = int(step.numpy())
    if start_step >= config.num_steps:
        log(f'Already at step {start_step} of {config.num_steps}: nothing to train')
        return TrainResult(start_step, manager.latest_checkpoint, None, None)
    if writes and (not resuming or not os.path.isfile(os.path.join(config.snapshot_dir,
                                                                    config_lib.CONFIG_FILE))):
        config_lib.write_config(config, config.snapshot_dir)
    elif writes and changed:
        recorded = config_lib.write_config(config, config.snapshot_dir,
                                           f'config-step-{start_step}.json')
        log(f'Resuming with {", ".join("--" + n.replace("_", "-") for n in changed)} changed: '
            f'{config_lib.CONFIG_FILE} keeps the recorded run, this one is in {recorded}')

    def dataset_fn(input_context, seed=config.random_seed, start_example=0):
        return input_pipeline.train_dataset(
            train_files, input_context.get_per_replica_batch_size(config.batch_size),
            crop_size=config.input_size,
            random_scale=(config.min_scale, config.max_scale) if config.random_scale else None,
            random_mirror=config.random_mirror, ignore_label=config.ignore_label,
            seed=seed, input_context=input_context, start_example=start_example,
            preprocessing=variants.get(config.variant_name).preprocessing)

    if coordinator is not None:
        # TF 2.21 traces this once on the chief and runs the same graph on every worker, with an
        # input context of one pipeline: a worker cannot tell its index, so it cannot pick its own
        # shards. Each worker instead reads every shard in its own order and crops: the seed comes
        # from the worker's clock when it builds its dataset (and again when a lost worker comes
        # back). So a resumed run cannot continue the stream the workers were reading.
        iterator = iter(coordinator.create_per_worker_dataset(
            lambda: strategy.distribute_datasets_from_function(
                lambda context: dataset_fn(context, seed=_per_worker_seed(config.random_seed)))))
    else:
        # One pipeline of global batches, which the step splits over the replicas (see
        # `build_train_step` for why not a distributed dataset); a resumed run continues the
        # stream after the batches it had taken. Under MultiWorkerMirroredStrategy every worker
        # reads this same stream and trains on its replicas' slices of each batch.
        iterator = iter(dataset_fn(tf.distribute.InputContext(),
                                   start_example=int(batches_taken.numpy()) * config.batch_size))

    train_step = build_train_step(model, optimizer, step, strategy, config, loss_scale)

    queue = validation = reporter = None
    if coordinator is not None:
        # `ParameterServerStrategy.cluster_resolver` is None in TF 2.21; its extended knows.
        num_workers = strategy.extended._num_workers
        queue = StepQueue(coordinator, train_step, iterator, step, num_workers)
        # Built outside the strategy's scope: the copy's variables live on the chief.
        copy_model = checkpoints.build_model(config)
        reporter = summaries.Reporter(config, copy_model, tf.distribute.get_strategy(),
                                      val_files, train_files, log)
        validation = BackgroundValidation(reporter, copy_model, model)
    elif writes:
        reporter = summaries.Reporter(config, model, strategy, val_files, train_files, log)
    save = (manager.save if writes
            else lambda checkpoint_number: checkpoints.write_and_discard(checkpoint))
    log(f'Training {config.split_name} ({len(train_files)} shards) on {replicas} replica(s), '
        f'steps {start_step} -> {config.num_steps}, global batch {config.batch_size}')

    confusion_sum = np.zeros([config.num_classes] * 2, np.int64)
    loss_value, val_miou, current = None, None, start_step
    timer, run_start, finite_step = summaries.StepTimer(), time.time(), start_step
    while current < config.num_steps:
        previous = current
        if queue is not None:
            if queue.idle:
                queue.aim(current, _next_save(current, config))
            done = queue.next_results()
            results = [(result.loss, result.confusion, result.step) for result in done]
            # Counted from the results taken, so that the loop saves once they are all in.
            current = queue.reached
        else:
            results = [(*train_step(iterator), None)]
            batches_taken.assign_add(1)
            current = int(step.numpy())
        for loss, confusion, at in results:
            loss_value = float(loss)
            # With loss scaling a non-finite step is skipped, and `divergence` decides below.
            if not math.isfinite(loss_value) and loss_scale is None:
                raise TrainingDiverged(
                    f'loss is {loss_value} at step {at or current}; stopped without saving. The '
                    f'last good checkpoint is {manager.latest_checkpoint}')
            confusion_sum += np.asarray(confusion, np.int64)
        if loss_scale is not None and loss_scale.divergence():
            raise TrainingDiverged(
                f'{loss_scale.divergence()} at {_steps(previous + 1, current + 1)}; stopped '
                f'without saving. The last good checkpoint is {manager.latest_checkpoint}')
        timer.count(current - previous)
        stopping = stop is not None and stop() and current < config.num_steps
        if reporter and (_crossed(previous, current, config.log_every)
                         or current >= config.num_steps):
            images_per_sec = timer.lap(config.batch_size)
            lr = float(poly_learning_rate(current, config.learning_rate, config.num_steps,
                                          config.power))
            eta = (config.num_steps - current) * config.batch_size / max(images_per_sec, 1e-9)
            train_miou = iou_from_confusion(confusion_sum)['miou']
            reporter.log_progress(current, loss_value, lr, images_per_sec, eta, train_miou,
                                  loss_scale)
            confusion_sum[:] = 0
        if (_crossed(previous, current, config.save_pred_every) or current >= config.num_steps
                or stopping):
            if not _all_finite(model.variables):
                raise TrainingDiverged(
                    f'weights became NaN or Inf at {_steps(finite_step + 1, current)} (they '
                    f'are checked before each save); stopped without saving. The last '
                    f'good checkpoint is {manager.latest_checkpoint}')
            if queue is not None:
                reporter.log_workers_busy(current, queue.busy_share())
            with timer.paused():
                save(checkpoint_number=current)
                if stopping:
                    raise Stopped(current, manager.latest_checkpoint if writes else None)
                if validation is not None:
                    validation.start(current, manager.latest_checkpoint)
                elif reporter:
                    val_miou = reporter.checkpoint_saved(current, manager.latest_checkpoint)
            if queue is not None and current < config.num_steps:
                queue.aim(current, _next_save(current, config))
            finite_step = current
    if validation is not None:
        val_miou = validation.wait()
    saved = manager.latest_checkpoint if writes else None
    log(f'Done: step {current} in {time.time() - run_start:.0f} s, checkpoint '
        f'{saved or "written by worker 0"}')
    return TrainResult(current, saved, loss_value, val_miou)
