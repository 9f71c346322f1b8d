"""What the training scripts share after choosing a strategy: hold the snapshot dir, clear what an
earlier killed run left in it, run the loop, and turn the errors a user can act on (and Ctrl-C)
into a one-line message and an exit status."""
import contextlib
import sys

import tensorflow as tf

from libs.runs import checkpoints, leftovers
from libs.training.loop import Stopped, TrainingDiverged, train
from libs.training.step import describe_label_error
from libs.utils import lock
from libs.utils.precision import compute_dtype


def _interrupted_line(snapshot_dir):
    latest = tf.train.latest_checkpoint(snapshot_dir)
    if latest is None:
        return f'interrupted before the first checkpoint; nothing was saved in {snapshot_dir}'
    step = checkpoints.describe_checkpoint(latest)['global_step']
    return (f'interrupted; the last checkpoint is {latest} (step {step}): re-run the same '
            'command to resume from it')


def _log(line):
    print(line, flush=True)


# What a scheduler's restart policy can tell from a finished run (TensorFlow's restart code).
STOPPED = 42


@contextlib.contextmanager
def _holding(snapshot_dir, writes):
    """Holds the snapshot dir and clears what an earlier killed run left in it, when this process
    writes it; a worker that does not write leaves both to the one that does."""
    if not writes:
        yield
        return
    with lock.hold(snapshot_dir, 'training'):
        leftovers.remove_leftovers(snapshot_dir, _log)
        try:
            yield
        except BaseException:
            # A save that Ctrl-C or a full disk cut short: its temporaries go now.
            leftovers.remove_leftovers(snapshot_dir, lambda line: None)
            raise


def run_training(config, strategy=None, coordinator=None, writes=True, stop=None):
    """Runs `loop.train` holding `config.snapshot_dir`; returns the process exit status.

    Statuses: 0 done, 1 refused (bad input, the folder in use, a file-system fault), 2 diverged,
    130 interrupted (Ctrl-C), `STOPPED` (42) stopped by `stop` (SIGTERM) after saving a
    checkpoint: re-running resumes from it.

    Args:
        writes, stop: as in `loop.train`.
    """
    try:
        compute_dtype(config.precision)  # float16 without a GPU: refused before anything runs
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    try:
        with _holding(config.snapshot_dir, writes):
            train(config, strategy=strategy, coordinator=coordinator, log=_log, writes=writes,
                  stop=stop)
    except lock.FolderInUse as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    except Stopped as e:
        where = e.checkpoint or 'written by worker 0'
        print(f'stopped at step {e.step} (a worker received SIGTERM): checkpoint {where}; '
              're-run the same command(s) to resume from it', file=sys.stderr, flush=True)
        return STOPPED
    except TrainingDiverged as e:
        print(f'error: training diverged: {e}', file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f'\n{_interrupted_line(config.snapshot_dir)}', file=sys.stderr, flush=True)
        return 130
    except tf.errors.InvalidArgumentError as e:
        message = describe_label_error(e, config)
        if message is None:
            raise
        print(f'error: {message}', file=sys.stderr)
        return 1
    return 0
