"""Test helper: run train.py, SIGKILL it mid-run, run it again (tests that start real processes)."""
import os
import re
import signal
import subprocess
import threading

import tensorflow as tf

from libs.runs.checkpoints import describe_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRESS_LINE = re.compile(r'^step (\d+)/\d+ ')


def kill_mid_run(command, kill_at_step, timeout=600):
    """Runs `command` (a train.py command line with `--log-every 1` and `--snapshot-dir`) and
    SIGKILLs it right after it logs step `kill_at_step`, which must come after its first
    checkpoint and before its last step: the run is then between two checkpoints.

    Fails with a clear message unless the situation is the one claimed: the process was alive
    just before the signal, died of it (status -9), had logged a checkpoint, and left a
    checkpoint before `--num-steps`.

    Returns:
        (global step of the checkpoint the kill left, the output of the killed run).
    """
    num_steps = int(command[command.index('--num-steps') + 1])
    assert 0 < kill_at_step < num_steps, (kill_at_step, num_steps)
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env, cwd=ROOT)
    # Reading lines blocks: a hung run is killed (by its pid) after `timeout` and fails below.
    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    lines, alive_at_kill = [], None
    try:
        for line in process.stdout:
            lines.append(line)
            match = PROGRESS_LINE.match(line)
            if match and int(match[1]) >= kill_at_step:
                alive_at_kill = process.poll() is None
                process.send_signal(signal.SIGKILL)
                break
        process.wait(timeout=60)
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    output = ''.join(lines)
    assert alive_at_kill is not None, (
        f'train.py ended (status {process.returncode}) before logging step {kill_at_step}; '
        f'nothing was killed:\n{output[-3000:]}')
    assert alive_at_kill and process.returncode == -signal.SIGKILL, (
        f'train.py was not running when killed (status {process.returncode}):\n'
        f'{output[-3000:]}')
    assert any(line.startswith('saved ') for line in lines), (
        f'train.py logged no checkpoint before step {kill_at_step}:\n{output[-3000:]}')
    snapshot_dir = command[command.index('--snapshot-dir') + 1]
    latest = tf.train.latest_checkpoint(snapshot_dir)
    assert latest is not None, f'the killed run left no checkpoint in {snapshot_dir}'
    killed_at = describe_checkpoint(latest)['global_step']
    assert 1 <= killed_at < num_steps, (
        f'the killed run left the checkpoint of step {killed_at}, not one before step '
        f'{num_steps}: it was not killed mid-run')
    return killed_at, output


def kill_after_first_checkpoint_then_rerun(command, kill_at_step):
    """`kill_mid_run`, then runs `command` again to the end, and checks what the issue asks of a
    killed run: it resumes from its last complete checkpoint, says so, and stops at exactly
    `--num-steps`.

    Returns:
        (global step of the checkpoint the kill left, output of the killed run, stdout of the
        second run).
    """
    killed_at, killed_output = kill_mid_run(command, kill_at_step)
    snapshot_dir = command[command.index('--snapshot-dir') + 1]
    latest = tf.train.latest_checkpoint(snapshot_dir)
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    rerun = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert f'Resuming from {latest} at step {killed_at}' in rerun.stdout
    final = tf.train.latest_checkpoint(snapshot_dir)
    num_steps = int(command[command.index('--num-steps') + 1])
    assert describe_checkpoint(final)['global_step'] == num_steps
    return killed_at, killed_output, rerun.stdout
