"""What the training scripts share after choosing a strategy: run the loop, turn the errors a user
can act on into a one-line message and an exit status."""
import sys

from libs.training.loop import TrainingDiverged, train


def run_training(config, strategy=None, coordinator=None):
    """Runs `loop.train`; returns the process exit status (0 on success)."""
    try:
        train(config, strategy=strategy, coordinator=coordinator,
              log=lambda line: print(line, flush=True))
    except TrainingDiverged as e:
        print(f'error: training diverged: {e}', file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    return 0
