"""Validation of parameter-server training on a thread of the chief, so that the workers train
meanwhile.

The chief copies the weights just saved into a model of its own (its variables live on the chief,
not on the ps tasks) while no step is in flight, then validates that copy on a thread while the
loop goes on scheduling steps. The copy is the checkpoint's state, not the moving one of the ps
variables.
"""
import threading


class BackgroundValidation:
    """Runs `reporter.checkpoint_saved` on a copy of `model`'s weights, one validation at a time.

    Args:
        reporter: a `summaries.Reporter` built on `copy_model` under the default strategy.
        copy_model: a `DeepLabV3` of the same configuration as `model`, built outside the
            parameter-server strategy's scope.
        model: the model being trained (variables on the ps tasks).
    """

    def __init__(self, reporter, copy_model, model):
        self._reporter = reporter
        self._targets = copy_model.variables
        self._sources = model.variables
        self._thread = None
        self._outcome = None

    def start(self, step, checkpoint_path):
        """Copies the weights (call while no step is in flight), then validates them on a thread;
        waits first for the previous validation to end."""
        self.wait()
        for target, source in zip(self._targets, self._sources):
            target.assign(source)
        self._thread = threading.Thread(target=self._run, args=(step, checkpoint_path),
                                        name=f'validation-{step}', daemon=True)
        self._thread.start()

    def _run(self, step, checkpoint_path):
        try:
            self._outcome = ('done', self._reporter.checkpoint_saved(step, checkpoint_path))
        except Exception as e:  # re-raised by `wait` in the loop's thread
            self._outcome = ('failed', e)

    def wait(self):
        """The last validation's mIoU (None without a val split) once it has ended.

        Raises:
            What the validation raised.
        """
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._outcome is None:
            return None
        kind, value = self._outcome
        if kind == 'failed':
            self._outcome = None
            raise value
        return value
