"""train_distributed.py: ps and worker tasks as real processes on 127.0.0.1, the chief training
through ParameterServerStrategy, surviving a lost worker, resuming, and refusing broken clusters
with the task and address named.

Every test stops the processes it started, by pid, in a `finally` block.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import launch_local_cluster as launcher  # noqa: E402

CHIEF_TIMEOUT = 240


@pytest.fixture(scope='module')
def records(tmp_path_factory):
    """8 train images (4 shards) and 2 val images of 65-97 px."""
    from libs.datasets.voc_conversion import convert_split
    from libs.datasets.sample import write_sample_dataset
    root = tmp_path_factory.mktemp('ps_data')
    write_sample_dataset(str(root / 'voc'), num_train=8, num_val=2, size_range=(65, 97), seed=5)
    for split, shards in (('train', 4), ('val', 1)):
        convert_split(str(root / 'voc'), split, str(root / 'records'), num_shards=shards,
                      num_workers=1, progress=False)
    return str(root / 'records')


class Cluster:
    """ps and worker tasks started by a test on free loopback ports."""

    def __init__(self, log_dir, num_ps=1, num_workers=2):
        self.log_dir = log_dir
        self.hosts = launcher.host_flags(num_ps, num_workers)
        self.processes = {}

    def address(self, job, index):
        flag = '--chief-host' if job == 'chief' else f'--{job}-hosts'
        return self.hosts[self.hosts.index(flag) + 1].split(',')[index]

    def start(self, job, index, hosts=None, env=None):
        log_path = os.path.join(self.log_dir, f'{job}{index}.log')
        with open(log_path, 'ab') as log:
            self.processes[job, index] = subprocess.Popen(
                launcher.task_command(job, index, self.hosts if hosts is None else hosts),
                cwd=ROOT, stdout=log,
                stderr=subprocess.STDOUT, env=env)

    def kill(self, job, index):
        process = self.processes[job, index]
        os.kill(process.pid, signal.SIGKILL)
        process.wait()

    def close(self):
        from libs.training.cluster import _view_file
        launcher.stop(list(self.processes.values()))
        for job, index in self.processes:
            if os.path.exists(_view_file(self.address(job, index))):
                os.remove(_view_file(self.address(job, index)))

    def chief(self, args, on_output=None, hosts=None, timeout=CHIEF_TIMEOUT):
        """Runs the chief to the end; `on_output` {text: action} runs each action once, when its
        text first appears in the chief's output. Returns (exit status, output)."""
        log_path = os.path.join(self.log_dir, f'chief-{time.time():.0f}.log')
        pending = dict(on_output or {})
        with open(log_path, 'wb') as log:
            chief = subprocess.Popen(launcher.task_command('chief', 0, hosts or self.hosts)
                                     + args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        try:
            while chief.poll() is None:
                assert time.time() < deadline, f'chief still running after {timeout} s'
                with open(log_path, errors='replace') as f:
                    output = f.read()
                for text in [t for t in pending if t in output]:
                    pending.pop(text)()
                time.sleep(0.2)
        finally:
            if chief.poll() is None:
                chief.kill()
                chief.wait()
        with open(log_path, errors='replace') as f:
            return chief.returncode, f.read()


@pytest.fixture
def cluster(tmp_path):
    clusters = []

    def make(**kwargs):
        clusters.append(Cluster(str(tmp_path), **kwargs))
        return clusters[-1]

    try:
        yield make
    finally:
        for c in clusters:
            c.close()


def train_args(records, run_dir, num_steps, save_every=4):
    return ['--data-dir', records, '--split-name', 'train', '--num-layers', '50',
            '--batch-size', '2', '--input-size', '33', '--num-steps', str(num_steps),
            '--log-every', '2', '--save-pred-every', str(save_every), '--snapshot-dir', run_dir]


def checkpoint_step(run_dir):
    from libs.runs.checkpoints import describe_checkpoint, resolve_checkpoint
    found = describe_checkpoint(resolve_checkpoint(run_dir))
    assert found['num_layers'] == 50 and found['num_classes'] == 21
    return found['global_step']


@pytest.mark.slow
def test_chief_trains_through_a_lost_worker_then_resumes(records, cluster, tmp_path):
    c = cluster(num_workers=2)
    for job, index in (('ps', 0), ('worker', 0), ('worker', 1)):
        c.start(job, index)
    run_dir = str(tmp_path / 'run')
    status, output = c.chief(train_args(records, run_dir, 8, save_every=8),
                             on_output={'step 2/8': lambda: c.kill('worker', 1)})
    assert status == 0, output[-4000:]
    assert f'Lost worker 1 at {c.address("worker", 1)}' in output, output[-4000:]
    assert 'step 8/8' in output and 'Done: step 8' in output
    # The global step counts applied updates and stops exactly at --num-steps.
    assert checkpoint_step(run_dir) == 8

    # The lost worker restarted with the same command rejoins; the chief re-run resumes.
    c.start('worker', 1)
    status, output = c.chief(train_args(records, run_dir, 14, save_every=10)
                             + ['--val-split', 'val', '--log-every', '1', '--keep-best'])
    assert status == 0, output[-4000:]
    assert re.search(r'Resuming from \S+model-8 at step 8', output), output[-4000:]
    assert 'Done: step 14' in output
    assert checkpoint_step(run_dir) == 14
    # Validation runs on a thread of the chief: the workers go on with steps 11-14 meanwhile (its
    # first call traces the predictor, seconds, while a step takes well under one).
    assert output.index('step 11/14') < output.index('step 10  val mIoU'), output[-4000:]
    assert output.index('step 10  val mIoU') < output.index('Done: step 14')
    # --keep-best: the chief's validation thread keeps the best of steps 10 and 14 in best/.
    mious = {int(s): float(m) for s, m in re.findall(r'step (\d+)  val mIoU ([\d.]+)', output)}
    assert sorted(mious) == [10, 14], output[-4000:]
    with open(os.path.join(run_dir, 'best', 'best.json')) as f:
        best = json.load(f)
    assert best['step'] == max(mious, key=lambda s: (mious[s], -s)), (best, mious)
    assert os.path.isfile(os.path.join(run_dir, 'best', f'model-{best["step"]}.index'))
    # The share of time the workers ran steps, exact at each checkpoint (nothing in flight).
    busy = re.findall(r'step (\d+): the workers were busy (\d+)% of the time', output)
    assert [step for step, _ in busy] == ['10', '14'], output[-4000:]
    assert all(0 < int(share) <= 100 for _, share in busy), output[-4000:]

    metrics = str(tmp_path / 'metrics.json')
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'evaluate.py'), '--restore-from',
                           run_dir, '--data-dir', records, '--split-name', 'val',
                           '--output-json', metrics], cwd=ROOT, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    with open(metrics) as f:
        result = json.load(f)
    assert 0.0 <= result['miou'] <= 1.0


def test_lost_ps_stops_the_chief_with_its_address(records, cluster, tmp_path):
    c = cluster(num_workers=1)
    c.start('ps', 0)
    c.start('worker', 0)
    run_dir = str(tmp_path / 'run')
    status, output = c.chief(train_args(records, run_dir, 100),
                             on_output={'step 4/100': lambda: c.kill('ps', 0)})
    assert status == 3, output[-4000:]
    assert f'error: lost ps 0 at {c.address("ps", 0)}' in output, output[-4000:]
    assert 're-run the chief' in output


def test_cluster_errors_name_task_and_address(records, cluster, tmp_path):
    c = cluster(num_workers=1)
    # A port in use.
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        port = taken.getsockname()[1]
        hosts = ['--ps-hosts', f'127.0.0.1:{port}'] + c.hosts[2:]
        done = subprocess.run(launcher.task_command('ps', 0, hosts), cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert f'ps 0 cannot start at 127.0.0.1:{port}: port {port} is in use' in done.stderr

    # An unreachable task.
    run_dir = str(tmp_path / 'run')
    status, output = c.chief(train_args(records, run_dir, 2) + ['--connect-timeout', '1'])
    assert status == 1
    assert f'ps 0 at {c.address("ps", 0)} is unreachable after 1 s' in output, output[-2000:]

    # Host lists that differ between tasks: the ps (configured through TF_CONFIG) lists another
    # worker than the chief does.
    other_worker = f'127.0.0.1:{launcher.free_ports(1)[0]}'
    tf_config = {'cluster': {'ps': [c.address('ps', 0)], 'worker': [other_worker],
                             'chief': [c.address('chief', 0)]},
                 'task': {'type': 'ps', 'index': 0}}
    c.start('ps', 0, hosts=[], env={**os.environ, 'TF_CONFIG': json.dumps(tf_config)})
    c.start('worker', 0)
    status, output = c.chief(train_args(records, run_dir, 2))
    assert status == 1, output[-2000:]
    assert (f'ps 0 at {c.address("ps", 0)} was started with other host lists: worker hosts '
            f'{other_worker} (the chief has {c.address("worker", 0)})') in output, output[-2000:]
    with open(os.path.join(str(tmp_path), 'ps0.log')) as f:
        assert 'cluster from TF_CONFIG' in f.read()
