"""train_distributed.py --mode sync: peer workers as real processes on 127.0.0.1, started by
launch_local_cluster.py --mode sync. SIGTERM to one worker stops every worker at a saved step; a
SIGKILLed worker stops the other, which names it, without writing anything; the relaunched
cluster resumes and ends at exactly --num-steps with the weights of one process given the same
global batch.

That process is train_multi_gpu.py --cpu-devices 2: the same float32 operations as 2 workers x 1
device, so the weights agree bit for bit (measured) through a stop, a kill and two resumes.
tests/test_multi_gpu.py checks that process against train.py over one step (update 1.5% apart);
beyond one step, from scratch at these crops, float32 rounding alone moves the update by half
(train.py against train.py --deterministic, crop 65, batch 4: 2.7% after one step, 45% after
two, 64% after four), so a comparison with train.py over several steps would compare noise.

Every launcher is stopped by its pid in a `finally` block; its workers end with it
(`PR_SET_PDEATHSIG`).
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from libs.utils.processes import command_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 8
PHASE_TIMEOUT = 400
STOPPED = 42  # runner.STOPPED, without importing TensorFlow's runner here


@pytest.fixture(scope='module')
def records(tmp_path_factory):
    """8 train images (4 shards) and 1 val image of 65-97 px."""
    from libs.datasets.voc_conversion import convert_split
    from libs.datasets.sample import write_sample_dataset
    root = tmp_path_factory.mktemp('sync_data')
    write_sample_dataset(str(root / 'voc'), num_train=8, num_val=1, size_range=(65, 97), seed=7)
    for split, shards in (('train', 4), ('val', 1)):
        convert_split(str(root / 'voc'), split, str(root / 'records'), num_shards=shards,
                      num_workers=1, progress=False)
    return str(root / 'records')


def train_args(records, run_dir):
    # --bn-decay 0.5: the moving statistics move enough to compare. The last step's checkpoint
    # is validated. --dropout-keep-prob 0.5: each worker drops its rows of the global batch's
    # mask, so two workers still equal one process with two replicas, across the resumes.
    return ['--data-dir', records, '--split-name', 'train', '--num-layers', '50',
            '--batch-size', '2', '--input-size', '33', '--num-steps', str(NUM_STEPS),
            '--bn-decay', '0.5', '--dropout-keep-prob', '0.5', '--log-every', '1',
            '--save-pred-every', '1000',
            '--val-split', 'val', '--keep-best', '--snapshot-dir', run_dir]


class Launch:
    """One `launch_local_cluster.py --mode sync --num-workers 2` run; its output (worker 0's and
    the launcher's own) goes to a file read while it runs."""

    def __init__(self, args, log_path):
        self.log_path = log_path
        with open(log_path, 'wb') as log:
            self.process = subprocess.Popen(
                [sys.executable, os.path.join(ROOT, 'launch_local_cluster.py'), '--mode', 'sync',
                 '--num-workers', '2'] + args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED='1'))
        self.deadline = time.time() + PHASE_TIMEOUT

    def output(self):
        with open(self.log_path, errors='replace') as f:
            return f.read()

    def wait_for(self, pattern):
        """The first match of `pattern` (multiline) in the output; fails if the launcher ends or
        the phase's time is up first."""
        while True:
            match = re.search(pattern, self.output(), re.M)
            if match:
                return match
            assert self.process.poll() is None, (
                f'the launcher ended (status {self.process.returncode}) before printing '
                f'{pattern!r}:\n{self.output()[-4000:]}')
            assert time.time() < self.deadline, f'no {pattern!r} after {PHASE_TIMEOUT} s'
            time.sleep(0.2)

    def worker_pid(self, index):
        return int(self.wait_for(rf'^worker {index}: pid (\d+)')[1])

    def worker_address(self, index):
        return self.wait_for(r'--worker-hosts (\S+)')[1].split(',')[index]

    def signal_worker(self, index, signum):
        """Sends `signum` to a worker, after checking that it is alive and training."""
        pid = self.worker_pid(index)
        command = command_line(pid)
        assert command and command[1].endswith('train_distributed.py'), command
        assert command[command.index('--task-index') + 1] == str(index), command
        with open(f'/proc/{pid}/stat') as f:
            state = f.read().rsplit(')', 1)[1].split()[0]
        assert state in ('R', 'S', 'D'), f'worker {index} is not running (state {state})'
        os.kill(pid, signum)
        return pid

    def finish(self):
        """(exit status, output) once the launcher ends."""
        self.process.wait(timeout=max(self.deadline - time.time(), 1))
        return self.process.returncode, self.output()

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def run_files(run_dir):
    """{name: (size, mtime)} of the checkpoint and config files of a snapshot dir."""
    return {name: (os.path.getsize(os.path.join(run_dir, name)),
                   os.path.getmtime(os.path.join(run_dir, name)))
            for name in os.listdir(run_dir) if name not in ('.lock', 'train')}


def checkpoint_step(run_dir):
    import tensorflow as tf

    from libs.runs.checkpoints import describe_checkpoint
    return describe_checkpoint(tf.train.latest_checkpoint(run_dir))['global_step']


@pytest.mark.parametrize('argv, message', [
    (['--ps-hosts', '127.0.0.1:2222'], '--ps-hosts is for --mode async'),
    (['--chief-host', '127.0.0.1:2222'], '--chief-host is for --mode async'),
    (['--job-name', 'ps'], '--job-name ps: --mode sync runs worker tasks only'),
])
def test_sync_mode_refuses_parameter_server_flags(argv, message, capsys):
    import train_distributed
    with pytest.raises(SystemExit) as exit_status:
        train_distributed.parse_args(['--mode', 'sync', '--worker-hosts', '127.0.0.1:2223']
                                     + argv)
    assert exit_status.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
    # --deterministic is refused in --mode async only: synchronous steps have a fixed order.
    assert train_distributed.parse_args(['--mode', 'sync', '--deterministic']).deterministic


@pytest.mark.parametrize('tf_config, message', [
    ({'cluster': {'worker': ['a:1'], 'ps': ['b:2']}, 'task': {'type': 'worker', 'index': 0}},
     "the cluster has jobs ['ps']: --mode sync takes workers only"),
    ({'cluster': {'worker': ['a:1', 'a:1']}, 'task': {'type': 'worker', 'index': 1}},
     'a:1 is listed for both worker 0 and worker 1'),
    ({'cluster': {'worker': ['a:1']}, 'task': {'type': 'worker', 'index': 1}},
     '--task-index 1 is out of range: the cluster has 1 worker task(s) (a:1)'),
])
def test_sync_cluster_is_checked_before_it_starts(tf_config, message):
    from libs.training import multi_worker
    with pytest.raises(ValueError, match=re.escape(message)):
        multi_worker.validate(tf_config)


@pytest.mark.slow
def test_sync_workers_stop_together_name_a_lost_worker_resume_and_equal_one_process(
        records, tmp_path):
    run_dir = str(tmp_path / 'run')
    args = ['--log-dir', str(tmp_path / 'logs'), '--'] + train_args(records, run_dir)
    launches = []

    def launch(name):
        launches.append(Launch(args, str(tmp_path / f'{name}.log')))
        return launches[-1]

    try:
        # 1. SIGTERM to worker 1 once training runs: both stop after the same step, worker 0
        # saves it, both exit with the status that says "stopped, resume me".
        first = launch('sigterm')
        first.wait_for(r'^step 2/')
        first.signal_worker(1, signal.SIGTERM)
        status, output = first.finish()
        assert status == STOPPED, output[-4000:]
        match = re.search(r'^stopped at step (\d+) \(a worker received SIGTERM\): checkpoint '
                          r'(\S+); re-run', output, re.M)
        assert match, output[-4000:]
        stopped, prefix = int(match[1]), match[2]
        assert 2 <= stopped < NUM_STEPS
        assert prefix == os.path.join(run_dir, f'model-{stopped}')
        assert f'worker 1 (pid {first.worker_pid(1)}) exited with status {STOPPED}' in output
        with open(tmp_path / 'logs' / 'worker1.log') as f:
            assert f'stopped at step {stopped} (a worker received SIGTERM)' in f.read()
        assert checkpoint_step(run_dir) == stopped
        files = run_files(run_dir)

        # 2. The same command resumes there; SIGKILL of worker 1 stops worker 0, which names it
        # and writes nothing.
        second = launch('sigkill')
        assert second.wait_for(r'^Resuming from (\S+) at step (\d+)').groups() == (
            prefix, str(stopped))
        second.wait_for(rf'^step {stopped + 1}/')
        lost = second.worker_address(1)
        second.signal_worker(1, signal.SIGKILL)
        status, output = second.finish()
        assert status == 3, output[-4000:]
        assert f'error: worker 1 ({lost}) is gone' in output, output[-4000:]
        assert f'worker 1 (pid {second.worker_pid(1)}) exited with status -9' in output
        assert run_files(run_dir) == files
        assert checkpoint_step(run_dir) == stopped

        # 3. The same command again runs to exactly --num-steps.
        third = launch('resume')
        status, output = third.finish()
        assert status == 0, output[-4000:]
        assert f'Resuming from {prefix} at step {stopped}' in output
        assert f'Done: step {NUM_STEPS}' in output
        # Worker 0 validated (a copy of the model loaded from the checkpoint it saved).
        assert re.search(rf'^step {NUM_STEPS}  val mIoU \S+ over 1 images', output, re.M), output
        # --keep-best under the synchronous workers: worker 0 kept the validated checkpoint.
        with open(os.path.join(run_dir, 'best', 'best.json')) as f:
            assert json.load(f)['step'] == NUM_STEPS
        assert checkpoint_step(run_dir) == NUM_STEPS
    finally:
        for one in launches:
            one.close()

    # One process with the same global batch, split over two replicas of MirroredStrategy, ends
    # with the same weights (the module docstring says why not train.py).
    single_dir = str(tmp_path / 'single')
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'train_multi_gpu.py'),
                           '--cpu-devices', '2'] + train_args(records, single_dir), cwd=ROOT,
                          capture_output=True, text=True, timeout=PHASE_TIMEOUT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    compare_weights(run_dir, single_dir)


def compare_weights(sync_dir, single_dir):
    from libs.nets.layers import BatchNorm
    from libs.runs.checkpoints import build_model, load_trained_model

    def moving_statistics(model):
        return [v.numpy() for m in model.submodules if isinstance(m, BatchNorm)
                for v in (m.moving_mean, m.moving_variance)]

    single, config, _, _ = load_trained_model(single_dir)
    both, _, _, step = load_trained_model(sync_dir)
    assert step == NUM_STEPS
    initial = build_model(config)  # the seed's initial weights, as both runs started

    def update(model):
        return [v.numpy() - w.numpy()
                for v, w in zip(model.trainable_variables, initial.trainable_variables)]

    single_update, sync_update = update(single), update(both)
    update_norm = np.sqrt(sum(np.sum(np.square(u)) for u in single_update))
    difference = np.sqrt(sum(np.sum(np.square(a - b))
                             for a, b in zip(sync_update, single_update)))
    assert update_norm > 1e-3  # the run moved the weights
    # Measured: 0.0 (the same float32 operations in the same order, bit for bit).
    assert difference <= 1e-5 * update_norm, difference / update_norm
    worst = max(float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-6))
                for a, b in zip(moving_statistics(both), moving_statistics(single)))
    assert worst <= 1e-5, worst
    moved = max(float(np.max(np.abs(a - b)))
                for a, b in zip(moving_statistics(single), moving_statistics(initial)))
    assert moved > 1.0, moved
