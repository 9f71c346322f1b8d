"""What a training run reports: progress lines on stdout and TensorBoard scalars, and at every
checkpoint a validation mIoU and a few images (input, ground truth, prediction in the dataset's
colours)."""
import contextlib
import datetime
import os
import time

import numpy as np
import tensorflow as tf

from libs.datasets import input_pipeline
from libs.evaluation.evaluator import evaluate_dataset
from libs.evaluation.inference import MultiScalePredictor
from libs.evaluation.prediction import class_names_of
from libs.runs import checkpoints
from libs.training.best_checkpoint import BestCheckpoint
from libs.utils.visualize import colorize

NUM_IMAGES = 3


def format_eta(seconds):
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


class StepTimer:
    """Images per second over the steps since the last progress line, not counting the time spent
    saving and validating (`paused`), which would otherwise show up as slow steps.

    Args:
        clock: seconds, monotonic.
    """

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.start, self.steps, self.paused_seconds = clock(), 0, 0.0

    def count(self, steps):
        """Adds steps taken since the last call."""
        self.steps += steps

    @contextlib.contextmanager
    def paused(self):
        """The time spent inside this block is not step time."""
        start = self.clock()
        try:
            yield
        finally:
            self.paused_seconds += self.clock() - start

    def lap(self, batch_size):
        """Images per second of the counted steps, then starts a new interval."""
        now = self.clock()
        elapsed = now - self.start - self.paused_seconds
        images_per_sec = self.steps * batch_size / max(elapsed, 1e-9)
        self.start, self.steps, self.paused_seconds = now, 0, 0.0
        return images_per_sec


class Reporter:
    """Logs from the one process that runs the loop (the chief), so nothing is logged twice.

    Args:
        config: the run's `TrainConfig`.
        model: the `DeepLabV3` being trained.
        strategy: its strategy (images and validation run in its scope, outside replicas).
        val_files: TFRecord shards of `--val-split`, or None.
        train_files: the training shards; with no validation split, the images come from these.
        log: where lines go.
    """

    def __init__(self, config, model, strategy, val_files, train_files, log):
        self.config = config
        self.log = log
        self.val_files = val_files
        self.writer = tf.summary.create_file_writer(os.path.join(config.snapshot_dir, 'train'))
        # Under MultiWorkerMirroredStrategy, reading batch norm's synchronised-on-read statistics
        # outside a step is an all-reduce that only this worker would join: validate a copy of
        # the model outside the strategy instead, loaded from each checkpoint it saves.
        self.reload = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        if self.reload:
            model, strategy = checkpoints.build_model(config), tf.distribute.get_strategy()
        self.model = model
        self.predictor = MultiScalePredictor(model, config.num_classes,
                                             output_stride=config.output_stride)
        self.strategy = strategy
        self.image_files = val_files or train_files
        # --keep-best: every mode validates here, so the best checkpoint is kept here too.
        self.best = (BestCheckpoint(config.snapshot_dir, log)
                     if config.keep_best and val_files else None)

    def log_progress(self, step, loss, lr, images_per_sec, eta_seconds, train_miou,
                     loss_scale=None):
        """One progress line and the same values in TensorBoard.

        Args:
            loss_scale: a `loss_scale.DynamicLossScale` (float16 training): its scale and the
                steps it skipped so far are shown.
        """
        self.log(f'step {step}/{self.config.num_steps}  loss {loss:.4f}  lr {lr:.6f}  '
                 f'{images_per_sec:.2f} img/s  train mIoU {train_miou:.3f}  '
                 + (f'{loss_scale.describe()}  ' if loss_scale is not None else '')
                 + f'ETA {format_eta(eta_seconds)}')
        with self.writer.as_default(step=step):
            tf.summary.scalar('loss', loss)
            tf.summary.scalar('learning_rate', lr)
            tf.summary.scalar('images_per_sec', images_per_sec)
            if np.isfinite(train_miou):
                tf.summary.scalar('train_miou', train_miou)
            if loss_scale is not None:
                tf.summary.scalar('skipped_steps', loss_scale.skipped.numpy())
        self.writer.flush()

    def log_workers_busy(self, step, share):
        """Parameter-server training: the share of the time since the previous checkpoint that
        the workers spent running steps (`step_queue.StepQueue.busy_share`)."""
        self.log(f'step {step}: the workers were busy {share:.0%} of the time since the previous '
                 'checkpoint')
        with self.writer.as_default(step=step):
            tf.summary.scalar('workers_busy', share)

    def checkpoint_saved(self, step, checkpoint_path):
        """Validates (if a split was given) and writes images; returns the val mIoU or None."""
        self.log(f'saved {checkpoint_path}')
        if self.reload:
            checkpoints.restore_model_weights(self.model, checkpoint_path)
        val_miou = None
        with self.strategy.scope(), self.writer.as_default(step=step):
            if self.val_files:
                result = evaluate_dataset(
                    self.predictor, input_pipeline.eval_dataset(
                        self.val_files, preprocessing=self.model.preprocessing),
                    self.config.num_classes, self.config.ignore_label, progress=False,
                    max_images=self.config.val_max_images)
                val_miou = result['miou']
                self.log(f'step {step}  val mIoU {val_miou:.4f} over '
                         f'{result["num_images"]} images ({self.config.val_split})')
                tf.summary.scalar('val_miou', val_miou)
                # One chart per class, grouped under val_iou/ (classes absent from the split's
                # labels and predictions have no IoU and no point).
                for name, iou in zip(class_names_of(self.config), result['per_class_iou']):
                    if iou is not None:
                        tf.summary.scalar(f'val_iou/{name}', iou)
                if self.best is not None:
                    self.best.update(step, val_miou, checkpoint_path, self.config.val_split,
                                     result['num_images'])
            self._write_images()
        self.writer.flush()
        return val_miou

    def _write_images(self):
        rows = []
        for example in input_pipeline.eval_dataset(
                self.image_files, preprocessing=self.model.preprocessing).take(NUM_IMAGES):
            prediction = self.predictor.predict(example['image'])
            image = self.model.preprocessing.denormalize(example['image'].numpy())
            rows.append(np.concatenate(
                [image, colorize(example['label'].numpy(), self.config.class_colors),
                 colorize(np.asarray(prediction), self.config.class_colors)],
                axis=1))
        for i, row in enumerate(rows):
            tf.summary.image(f'input_truth_prediction/{i}', row[np.newaxis])
