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
from libs.utils.custom_gradients import released_custom_gradients

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
    # The step's traced graphs hold the model and its optimiser slots through the custom
    # gradients they register; released when the run returns (libs/utils/custom_gradients.py).
    with released_custom_gradients():
        return _train(config, strategy, coordinator, log, writes, stop, loss_scale)


def _train(config, strategy, coordinator, log, writes, stop, loss_scale):
    strategy = strategy or tf.distribute.get_strategy()
    config, train_files, val_files, changed = _prepare(config, strategy, log)
    run = _Run(config, strategy, coordinator, log, writes, loss_scale, train_files, val_files)
    if run.start_step >= config.num_steps:
        log(f'Already at step {run.start_step} of {config.num_steps}: nothing to train')
        return TrainResult(run.start_step, run.manager.latest_checkpoint, None, None)
    if writes:
        _record_config(config, run.resuming, changed, run.start_step, log)
    run.start_steps()
    log(f'Training {config.split_name} ({len(train_files)} shards) on {run.replicas} '
        f'replica(s), steps {run.start_step} -> {config.num_steps}, global batch '
        f'{config.batch_size}')
    return run.loop(stop)


def _prepare(config, strategy, log):
    """Checks what can be checked before building anything and completes `config` with the
    dataset's classes.

    Returns:
        (config, train shards, val shards or None, the names of the settings a resume changed).
    """
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
    return config, train_files, val_files, changed


def _record_config(config, resuming, changed, start_step, log):
    """Writes config.json when the run starts fresh; a resume that changed settings writes its
    own config-step-N.json beside it."""
    if not resuming or not os.path.isfile(os.path.join(config.snapshot_dir,
                                                       config_lib.CONFIG_FILE)):
        config_lib.write_config(config, config.snapshot_dir)
    elif changed:
        recorded = config_lib.write_config(config, config.snapshot_dir,
                                           f'config-step-{start_step}.json')
        log(f'Resuming with {", ".join("--" + n.replace("_", "-") for n in changed)} changed: '
            f'{config_lib.CONFIG_FILE} keeps the recorded run, this one is in {recorded}')


def _train_iterator(config, strategy, coordinator, train_files, batches_taken):
    """The iterator the train step reads: one stream of global batches, or one per worker."""

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
        return iter(coordinator.create_per_worker_dataset(
            lambda: strategy.distribute_datasets_from_function(
                lambda context: dataset_fn(context, seed=_per_worker_seed(config.random_seed)))))
    # One pipeline of global batches, which the step splits over the replicas (see
    # `build_train_step` for why not a distributed dataset); a resumed run continues the
    # stream after the batches it had taken. Under MultiWorkerMirroredStrategy every worker
    # reads this same stream and trains on its replicas' slices of each batch.
    return iter(dataset_fn(tf.distribute.InputContext(),
                           start_example=int(batches_taken.numpy()) * config.batch_size))


class _Run:
    """One call of `train`: the model and its checkpoint (built by the constructor), the step
    loop (`loop`), and what the loop does at a log step (`_log_progress`) and at a save step
    (`_save`, then `_validate`)."""

    def __init__(self, config, strategy, coordinator, log, writes, loss_scale, train_files,
                 val_files):
        """Builds the model, the optimizer and the checkpoint, and restores or initialises
        them."""
        self.config, self.strategy, self.coordinator = config, strategy, coordinator
        self.log, self.writes = log, writes
        self.train_files, self.val_files = train_files, val_files
        self.replicas = strategy.num_replicas_in_sync
        with strategy.scope():
            self.model = checkpoints.build_model(config, self.replicas)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name='global_step',
                                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.optimizer = build_optimizer(config, self.step, self.model)
            if loss_scale is None and config.precision == 'float16':
                # float16 gradients need loss scaling; bfloat16 has float32's range and needs
                # none.
                loss_scale = loss_scale_lib.DynamicLossScale()
        self.loss_scale = loss_scale
        self.checkpoint, self.batches_taken = run_checkpoint(
            self.model, self.optimizer, self.step, loss_scale,
            counts_batches=coordinator is None)
        self.manager = tf.train.CheckpointManager(self.checkpoint, config.snapshot_dir,
                                                  config.max_to_keep,
                                                  checkpoint_name=CHECKPOINT_NAME)
        self.resuming = initialise(config, self.model, self.manager, log)
        self.start_step = int(self.step.numpy())

    def start_steps(self):
        """Builds the input, the train step, and who logs, validates and saves."""
        config, strategy, coordinator = self.config, self.strategy, self.coordinator
        self.iterator = _train_iterator(config, strategy, coordinator, self.train_files,
                                        self.batches_taken)
        self.train_step = build_train_step(self.model, self.optimizer, self.step, strategy,
                                           config, self.loss_scale)
        self.queue = self.validation = self.reporter = None
        if coordinator is not None:
            # `ParameterServerStrategy.cluster_resolver` is None in TF 2.21; its extended knows.
            num_workers = strategy.extended._num_workers
            self.queue = StepQueue(coordinator, self.train_step, self.iterator, self.step,
                                   num_workers)
            # Built outside the strategy's scope: the copy's variables live on the chief.
            copy_model = checkpoints.build_model(config)
            self.reporter = summaries.Reporter(config, copy_model, tf.distribute.get_strategy(),
                                               self.val_files, self.train_files, self.log)
            self.validation = BackgroundValidation(self.reporter, copy_model, self.model)
        elif self.writes:
            self.reporter = summaries.Reporter(config, self.model, strategy, self.val_files,
                                               self.train_files, self.log)
        checkpoint = self.checkpoint
        self.save_checkpoint = (
            self.manager.save if self.writes
            else lambda checkpoint_number: checkpoints.write_and_discard(checkpoint))

    def loop(self, stop):
        """Runs steps until the global step reaches `num_steps`; logs, saves and validates on
        the way."""
        config = self.config
        self.confusion_sum = np.zeros([config.num_classes] * 2, np.int64)
        self.loss_value, self.val_miou, current = None, None, self.start_step
        self.timer, run_start = summaries.StepTimer(), time.time()
        self.finite_step = self.start_step
        while current < config.num_steps:
            previous = current
            current = self._take_steps(current)
            self.timer.count(current - previous)
            stopping = stop is not None and stop() and current < config.num_steps
            if self.reporter and (_crossed(previous, current, config.log_every)
                                  or current >= config.num_steps):
                self._log_progress(current)
            if (_crossed(previous, current, config.save_pred_every)
                    or current >= config.num_steps or stopping):
                self._save(current, stopping)
        if self.validation is not None:
            self.val_miou = self.validation.wait()
        saved = self.manager.latest_checkpoint if self.writes else None
        self.log(f'Done: step {current} in {time.time() - run_start:.0f} s, checkpoint '
                 f'{saved or "written by worker 0"}')
        return TrainResult(current, saved, self.loss_value, self.val_miou)

    def _take_steps(self, current):
        """Runs one step (or takes the workers' finished steps) from `current`; returns the
        global step reached.

        Raises:
            TrainingDiverged: a loss was NaN or Inf.
        """
        previous = current
        if self.queue is not None:
            if self.queue.idle:
                self.queue.aim(current, _next_save(current, self.config))
            done = self.queue.next_results()
            results = [(result.loss, result.confusion, result.step) for result in done]
            # Counted from the results taken, so that the loop saves once they are all in.
            current = self.queue.reached
        else:
            results = [(*self.train_step(self.iterator), None)]
            self.batches_taken.assign_add(1)
            current = int(self.step.numpy())
        for loss, confusion, at in results:
            self.loss_value = float(loss)
            # With loss scaling a non-finite step is skipped, and `divergence` decides below.
            if not math.isfinite(self.loss_value) and self.loss_scale is None:
                raise TrainingDiverged(
                    f'loss is {self.loss_value} at step {at or current}; stopped without '
                    f'saving. The last good checkpoint is {self.manager.latest_checkpoint}')
            self.confusion_sum += np.asarray(confusion, np.int64)
        if self.loss_scale is not None and self.loss_scale.divergence():
            raise TrainingDiverged(
                f'{self.loss_scale.divergence()} at {_steps(previous + 1, current + 1)}; '
                f'stopped without saving. The last good checkpoint is '
                f'{self.manager.latest_checkpoint}')
        return current

    def _log_progress(self, current):
        """One progress line (and TensorBoard scalars): loss, lr, images/s, ETA, train mIoU."""
        config = self.config
        images_per_sec = self.timer.lap(config.batch_size)
        lr = float(poly_learning_rate(current, config.learning_rate, config.num_steps,
                                      config.power))
        eta = (config.num_steps - current) * config.batch_size / max(images_per_sec, 1e-9)
        train_miou = iou_from_confusion(self.confusion_sum)['miou']
        self.reporter.log_progress(current, self.loss_value, lr, images_per_sec, eta,
                                   train_miou, self.loss_scale)
        self.confusion_sum[:] = 0

    def _save(self, current, stopping):
        """Checks the weights, saves the checkpoint of step `current`, then stops (raising
        `Stopped`) or validates it.

        Raises:
            TrainingDiverged: a weight is NaN or Inf; nothing is saved.
            Stopped: `stopping`, after the save.
        """
        if not _all_finite(self.model.variables):
            raise TrainingDiverged(
                f'weights became NaN or Inf at {_steps(self.finite_step + 1, current)} (they '
                f'are checked before each save); stopped without saving. The last '
                f'good checkpoint is {self.manager.latest_checkpoint}')
        if self.queue is not None:
            self.reporter.log_workers_busy(current, self.queue.busy_share())
        with self.timer.paused():
            self.save_checkpoint(checkpoint_number=current)
            if stopping:
                raise Stopped(current, self.manager.latest_checkpoint if self.writes else None)
            self._validate(current)
        if self.queue is not None and current < self.config.num_steps:
            self.queue.aim(current, _next_save(current, self.config))
        self.finite_step = current

    def _validate(self, current):
        """Validates the checkpoint just saved at step `current`: on a thread under the
        parameter-server strategy (its mIoU comes at the end), else here, where `val_miou`
        becomes its mIoU (None without a val split or on a process that does not write)."""
        if self.validation is not None:
            self.validation.start(current, self.manager.latest_checkpoint)
        elif self.reporter:
            self.val_miou = self.reporter.checkpoint_saved(current,
                                                           self.manager.latest_checkpoint)
