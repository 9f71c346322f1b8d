"""Parameter-server training without a barrier: a bounded queue of steps kept scheduled on the
workers, whose results the chief takes as they complete.

The chief of `ParameterServerStrategy` hands steps (closures) to a `ClusterCoordinator`, which
gives each to the next free worker. A worker whose queue is empty waits, so the chief keeps two
steps per worker in flight at all times (a worker finishing one step finds the next already
waiting) and schedules one more each time it takes a result. Steps are scheduled
towards a target (the next checkpoint, or the last step): exactly as many as the target is away,
each guarded by it (see `step.build_train_step`'s `limit`), so the global step stops at the target
even when the coordinator re-runs the steps of a lost worker. The queue runs dry only at the
target, where a checkpoint then holds one consistent state: weights, momentum and step counter of
the same applied updates, and the share of that stretch the workers spent running steps is exact
(`busy_share`). (TensorFlow would save the ps variables while workers update them, but
each variable would then hold another number of updates, and the saved step would match none.)
"""
import collections
import dataclasses
import time

import tensorflow as tf


@dataclasses.dataclass
class StepResult:
    """One completed step.

    Attributes:
        loss: the step's loss (float).
        confusion: int64 [C, C] confusion matrix of its training predictions.
        step: the global step read on the worker right after its update: the step this update
            made, or a step or two later when other workers updated in between.
        seconds: how long its worker ran it (the worker's clock), reading its batch included.
    """
    loss: float
    confusion: object
    step: int
    seconds: float


def _timed(train_step, global_step):
    """`train_step(iterator, limit)` that also returns the global step after it and the seconds
    it took on its worker."""

    @tf.function(autograph=False)
    def timed_step(iterator, limit):
        start = tf.timestamp()
        with tf.control_dependencies([start]):
            loss, confusion, applied = train_step(iterator, limit)
        with tf.control_dependencies([loss, confusion, applied]):
            end = tf.timestamp()
            step_after = global_step.read_value()
        return loss, confusion, applied, step_after, end - start

    return timed_step


class StepQueue:
    """Keeps two training steps per worker in flight on the workers of a `ClusterCoordinator`.

    Args:
        coordinator: the chief's `ClusterCoordinator`.
        train_step: from `step.build_train_step`, called with (per-worker iterator, limit).
        iterator: the per-worker iterator of `coordinator.create_per_worker_dataset`.
        global_step: the int64 step variable the updates increment.
        num_workers: the cluster's workers; two steps per worker are kept in flight.
    """

    def __init__(self, coordinator, train_step, iterator, global_step, num_workers):
        self._coordinator = coordinator
        self._step = _timed(train_step, global_step)
        self._iterator = iterator
        self._depth = 2 * num_workers
        self._pending = collections.deque()
        self._to_schedule = 0
        self._limit = None
        self._global_step = global_step
        self._start = self._applied = 0
        self._aimed_at, self._busy_seconds = time.monotonic(), 0.0
        self._num_workers = num_workers

    @property
    def idle(self):
        """True when no step is in flight or left to schedule towards the target."""
        return not self._pending and not self._to_schedule

    def aim(self, current, target):
        """Schedules the `target - current` steps that take the global step from `current` to
        `target`, `depth` at a time; call when `idle`."""
        assert self.idle, 'aim() with steps still in flight'
        self._to_schedule = max(target - current, 0)
        self._start, self._applied = current, 0
        self._aimed_at, self._busy_seconds = time.monotonic(), 0.0
        self._limit = tf.constant(target, tf.int64)
        self._fill()

    def _fill(self):
        while self._to_schedule and len(self._pending) < self._depth:
            self._pending.append(self._coordinator.schedule(self._step,
                                                            args=(self._iterator, self._limit)))
            self._to_schedule -= 1

    def next_results(self):
        """Waits for the oldest step in flight, then tops the queue up.

        Returns:
            [`StepResult`]: the step, or nothing when it was not applied (a step re-run after
            its target was reached).
        Raises:
            Whatever a step raised (`tf.errors.OpError`; `UnavailableError` for a lost ps).
        """
        loss, confusion, applied, step, seconds = self._pending.popleft().fetch()
        self._fill()
        self._busy_seconds += seconds
        if not applied:
            return []
        self._applied += 1
        return [StepResult(float(loss), confusion, int(step), float(seconds))]

    def busy_share(self):
        """The share of the time since `aim` that the workers spent running steps, once `idle`:
        every step towards the target then began after `aim` and has ended, so the share is exact
        (steps' durations are measured on their workers' clocks, the span on the chief's).

        Returns:
            float in [0, 1].
        """
        assert self.idle, 'busy_share() with steps still in flight'
        span = (time.monotonic() - self._aimed_at) * self._num_workers
        return min(self._busy_seconds / max(span, 1e-9), 1.0)

    @property
    def reached(self):
        """The global step the results taken so far account for; once `idle`, the global step
        itself, which is the target (a step the coordinator re-ran for a lost worker may have been
        applied twice, and a later one then not at all)."""
        if self.idle:
            return int(self._global_step.numpy())
        return self._start + self._applied

