"""Removing what a killed or failed run left in its folder.

TensorFlow's `CheckpointManager` saves checkpoint `<name>-N` into a folder `<name>-N_temp/` (its
data as `part-*.tempstate<random>` while being written), then renames the pieces into place,
and rewrites the `checkpoint` state file through `checkpoint.tmp<random>`. A process killed in
the middle (or stopped by a full disk) leaves those behind: hundreds of MB for a ResNet-101,
which after a full disk keep the disk full. `config.write_config` writes `config.json.tmp-PID`
(and `config-step-N.json.tmp-PID`) first, likewise.
Only call this while holding the folder (`lock.hold`): then no live process is writing them.
"""
import os
import re
import shutil

_LEFTOVER_RE = re.compile(r'^(.+-\d+_temp|.+\.tempstate\d*|checkpoint\.tmp[0-9a-f]*'
                          r'|config(-step-\d+)?\.json\.tmp-\d+)$')


def remove_leftovers(run_dir, log):
    """Removes the temporary files and folders of unfinished saves in `run_dir`.

    Args:
        run_dir: a snapshot dir (missing is fine).
        log: called with one line per removed path.
    Returns:
        The removed paths.
    """
    if not os.path.isdir(run_dir):
        return []
    removed = []
    for name in sorted(os.listdir(run_dir)):
        if not _LEFTOVER_RE.match(name):
            continue
        path = os.path.join(run_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
        removed.append(path)
        log(f'Removed {path}, left by an earlier run that did not finish writing it')
    return removed
