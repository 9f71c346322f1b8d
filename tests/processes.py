"""Test helper: run train.py, SIGKILL it mid-run, run it again (tests that start real processes)."""
import os
import signal
import subprocess
import time

import tensorflow as tf

from libs.runs.checkpoints import describe_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def kill_after_first_checkpoint_then_rerun(command, num_steps, wait=1.5):
    """Runs `command` (a train.py command line with `--snapshot-dir`), SIGKILLs it `wait` seconds
    after its first checkpoint (somewhere in the next steps, perhaps mid-save), then runs it
    again to the end, and checks what the issue asks of a killed run: it resumes from its last
    complete checkpoint, says so, and stops at exactly `num_steps`.

    Returns:
        (global step of the checkpoint the kill left, stdout of the second run).
    """
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env, cwd=ROOT)
    try:
        deadline = time.time() + 300
        for line in process.stdout:
            if line.startswith('saved ') or time.time() > deadline:
                break
        time.sleep(wait)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    snapshot_dir = command[command.index('--snapshot-dir') + 1]
    latest = tf.train.latest_checkpoint(snapshot_dir)
    assert latest is not None, 'the first run was killed before any checkpoint'
    killed_at = describe_checkpoint(latest)['global_step']
    assert 1 <= killed_at <= num_steps
    rerun = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    if killed_at < num_steps:
        assert f'Resuming from {latest} at step {killed_at}' in rerun.stdout
    final = tf.train.latest_checkpoint(snapshot_dir)
    assert describe_checkpoint(final)['global_step'] == num_steps
    return killed_at, rerun.stdout
