"""Keeping the checkpoint with the best validation mIoU (`train.py --val-split val --keep-best`).

Besides the last `--max-to-keep` checkpoints, the run folder then holds `best/`: a copy of the
checkpoint with the best val mIoU so far, its own `checkpoint` state file, a copy of the run's
`config.json`, and `best.json` (`step`, `miou`, `checkpoint`, `val_split`, `val_images`). `best/`
is a run folder of its own: `evaluate.py --restore-from <snapshot-dir>/best` (and predict.py,
export.py) find its checkpoint and config without knowing it is a copy, and it can be moved
elsewhere alone.

`best/` is replaced atomically as far as the file system allows: the new one is written as
`best.tmp-<pid>/`, the old one renamed to `best.old-<pid>/`, the new one renamed to `best/`, the
old one deleted. A process killed between the two renames leaves `best.old-<pid>/` and no `best/`;
the next run puts it back (`recover`). A resumed run reads `best.json`, so a worse mIoU after the
resume does not replace a better one from before; a resume that validates on other images
(another --val-split or --val-max-images) says so and starts the record again, since mIoUs of
different images cannot be compared.
"""
import glob
import json
import os
import re
import shutil

import config as config_lib

BEST_DIR = 'best'
BEST_JSON = 'best.json'
_TMP_RE = re.compile(r'^best\.tmp-\d+$')
_OLD_RE = re.compile(r'^best\.old-\d+$')


def _link_or_copy(source, target):
    """Checkpoint files are never modified once written: a hard link costs no disk space."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def recover(snapshot_dir, log):
    """Clears what a run killed while replacing `best/` left: puts back `best.old-<pid>/` when
    `best/` is missing, else deletes it, and deletes unfinished `best.tmp-<pid>/` folders.

    Call only while holding the snapshot dir (`lock.hold`), as the training scripts do.
    """
    if not os.path.isdir(snapshot_dir):
        return
    best = os.path.join(snapshot_dir, BEST_DIR)
    for name in sorted(os.listdir(snapshot_dir)):
        path = os.path.join(snapshot_dir, name)
        if _OLD_RE.match(name) and not os.path.exists(best):
            os.rename(path, best)
            log(f'Restored {best} from {path}, left by a run killed while replacing it')
        elif _OLD_RE.match(name) or _TMP_RE.match(name):
            shutil.rmtree(path)
            log(f'Removed {path}, left by an earlier run that did not finish writing it')


def read_best(snapshot_dir):
    """The record of a run's best checkpoint (`best.json` as a dict), or None if it has none."""
    path = os.path.join(snapshot_dir, BEST_DIR, BEST_JSON)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


class BestCheckpoint:
    """Keeps `<snapshot_dir>/best/` at the checkpoint with the highest validation mIoU.

    Args:
        snapshot_dir: the run folder (holding `config.json` by the first `update`).
        log: where a line goes each time the best changes.
    """

    def __init__(self, snapshot_dir, log):
        self.snapshot_dir = snapshot_dir
        self.log = log
        recover(snapshot_dir, log)
        record = read_best(snapshot_dir)
        self.best_miou = None if record is None else record['miou']
        self.measured_on = (None if record is None
                            else (record.get('val_split'), record.get('val_images')))
        if record is not None:
            log(f'Best checkpoint so far: step {record["step"]}, val mIoU {record["miou"]:.4f} '
                f'({os.path.join(snapshot_dir, BEST_DIR)})')

    def update(self, step, miou, checkpoint_prefix, val_split=None, val_images=None):
        """Makes `checkpoint_prefix` the best if `miou` beats the best so far (ties keep the
        earlier one).

        Returns:
            Whether `best/` now holds this checkpoint.
        """
        if miou is None:
            return False
        if self.best_miou is not None and self.measured_on != (val_split, val_images):
            # A resume with another --val-split or --val-max-images: the recorded mIoU was
            # measured on other images and cannot be compared.
            self.log(f'step {step}: the best so far ({self.best_miou:.4f}) was measured on '
                     f'{self.measured_on[1]} images of {self.measured_on[0]}, this validation on '
                     f'{val_images} of {val_split}: the record starts again')
            self.best_miou = None
        if self.best_miou is not None and miou <= self.best_miou:
            return False
        files = glob.glob(glob.escape(checkpoint_prefix) + '.*')
        if not any(f.endswith('.index') for f in files):
            # A parameter-server run validates in the background, and --max-to-keep may have
            # deleted the checkpoint meanwhile.
            self.log(f'step {step}: val mIoU {miou:.4f} is the best, but {checkpoint_prefix} '
                     'was already deleted (raise --max-to-keep); best/ unchanged')
            return False
        tmp = os.path.join(self.snapshot_dir, f'best.tmp-{os.getpid()}')
        old = os.path.join(self.snapshot_dir, f'best.old-{os.getpid()}')
        best = os.path.join(self.snapshot_dir, BEST_DIR)
        os.makedirs(tmp)
        name = os.path.basename(checkpoint_prefix)
        for source in files:
            _link_or_copy(source, os.path.join(tmp, os.path.basename(source)))
        with open(os.path.join(tmp, 'checkpoint'), 'w') as f:
            # The state file `tf.train.latest_checkpoint` reads; relative, so best/ can move.
            f.write(f'model_checkpoint_path: "{name}"\nall_model_checkpoint_paths: "{name}"\n')
        shutil.copy2(os.path.join(self.snapshot_dir, config_lib.CONFIG_FILE),
                     os.path.join(tmp, config_lib.CONFIG_FILE))
        with open(os.path.join(tmp, BEST_JSON), 'w') as f:
            json.dump({'step': int(step), 'miou': float(miou), 'checkpoint': name,
                       'val_split': val_split, 'val_images': val_images}, f, indent=2)
            f.write('\n')
        if os.path.exists(best):
            os.rename(best, old)
        os.rename(tmp, best)
        if os.path.exists(old):
            shutil.rmtree(old)
        previous, self.best_miou = self.best_miou, float(miou)
        self.measured_on = (val_split, val_images)
        self.log(f'step {step}: best val mIoU so far ({miou:.4f}'
                 + (f', was {previous:.4f}' if previous is not None else '')
                 + f'): kept in {best}')
        return True
