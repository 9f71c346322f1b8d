"""Try train_distributed.py on one machine, its tasks on free 127.0.0.1 ports.

--mode async (default): ps and worker tasks in the background, then the chief in the foreground;
the tasks it started are stopped when the chief exits.

    .venv/bin/python launch_local_cluster.py --num-workers 2 -- --data-dir data/records \\
        --split-name train --num-layers 50 --batch-size 4 --input-size 97 --num-steps 200 \\
        --snapshot-dir runs/ps

--mode sync: N peer workers (MultiWorkerMirroredStrategy), worker 0 in the foreground, the others
in the background with their output in --log-dir; the launcher exits with worker 0's status once
every worker has ended.

    .venv/bin/python launch_local_cluster.py --mode sync --num-workers 2 -- \\
        --data-dir data/records --split-name train --num-layers 50 --batch-size 4 \\
        --input-size 97 --num-steps 200 --snapshot-dir runs/sync

Everything after `--` goes to the chief (every worker in --mode sync); those flags are checked
before any task starts. The tasks' pids and log files are printed first. In --mode async, kill a
worker (`kill -9 PID`) to watch the run go on without it, restart it with the printed command to
watch it rejoin. In --mode sync, `kill PID` (SIGTERM) of any worker saves a checkpoint at the next
step and stops them all; `kill -9 PID` stops the others, naming the lost worker. The tasks end
with the launcher, however it ends (Ctrl-C, SIGTERM, even SIGKILL); SIGTERM to the launcher is
passed on to every worker of a sync run, which then save as above. Each launch picks new ports:
after a lost ps task or any lost sync worker, re-run the whole launcher command; the run resumes
from its last checkpoint. See docs/distributed.md.
"""
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

import config as config_lib
import train_distributed
from libs.utils.processes import die_with_parent

ROOT = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(ROOT, 'train_distributed.py')
CHIEF_GRACE_SECONDS = 10.0
# A sync worker told to stop finishes its step and saves before it exits.
SYNC_GRACE_SECONDS = 120.0


def free_ports(count):
    """`count` distinct ports the OS reports free on 127.0.0.1 (bound to port 0, then released)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(('127.0.0.1', 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def host_flags(num_ps, num_workers, ports=None):
    """The `--ps-hosts --worker-hosts --chief-host` flags of a loopback cluster."""
    ports = ports or free_ports(num_ps + num_workers + 1)
    hosts = [f'127.0.0.1:{p}' for p in ports]
    return ['--ps-hosts', ','.join(hosts[:num_ps]),
            '--worker-hosts', ','.join(hosts[num_ps:num_ps + num_workers]),
            '--chief-host', hosts[-1]]


def task_command(job, index, hosts):
    return [sys.executable, SCRIPT, '--job-name', job, '--task-index', str(index)] + hosts


def sync_worker_command(index, ports):
    """The command of worker `index` of a synchronous loopback cluster whose workers listen on
    `ports` (without training flags)."""
    hosts = ','.join(f'127.0.0.1:{p}' for p in ports)
    return [sys.executable, SCRIPT, '--mode', 'sync', '--worker-hosts', hosts,
            '--task-index', str(index)]


def _start(command, **kwargs):
    """Starts `command` as a child that the kernel ends when this process ends."""
    launcher = os.getpid()
    return subprocess.Popen(command, cwd=ROOT, preexec_fn=lambda: die_with_parent(launcher),
                            **kwargs)


def start_task(job, index, hosts, log_path):
    """Starts one ps or worker task in the background, its output in `log_path`."""
    with open(log_path, 'ab') as log:
        return _start(task_command(job, index, hosts), stdout=log, stderr=subprocess.STDOUT)


def stop(processes, grace=5.0):
    """Terminates the given processes (SIGTERM, then SIGKILL after `grace` seconds)."""
    for p in processes:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.time() + grace
    for p in processes:
        try:
            p.wait(timeout=max(deadline - time.time(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _terminate(signum, frame):
    # SIGTERM unwinds like Ctrl-C, so that the tasks are stopped in order.
    raise SystemExit(128 + signum)


def run_sync(num_workers, log_dir, training_args):
    """Starts `num_workers` synchronous workers, worker 0 in the foreground; returns its exit
    status once every worker has ended."""
    ports = free_ports(num_workers)
    commands = [sync_worker_command(i, ports) + training_args
                for i in range(num_workers)]
    train_distributed.parse_args(commands[0][2:])  # the flags, before any worker starts
    os.makedirs(log_dir, exist_ok=True)
    signal.signal(signal.SIGTERM, _terminate)
    workers = []
    try:
        for i in range(1, num_workers):
            log_path = os.path.join(log_dir, f'worker{i}.log')
            with open(log_path, 'ab') as log:
                workers.append(_start(commands[i], stdout=log, stderr=subprocess.STDOUT))
            print(f'worker {i}: pid {workers[-1].pid}, log {log_path}', flush=True)
        workers.insert(0, _start(commands[0]))
        print(f'worker 0: pid {workers[0].pid}: {shlex.join(commands[0])}', flush=True)
        status = workers[0].wait()
        for i, worker in enumerate(workers):
            try:
                print(f'worker {i} (pid {worker.pid}) exited with status '
                      f'{worker.wait(timeout=SYNC_GRACE_SECONDS)}', flush=True)
            except subprocess.TimeoutExpired:
                print(f'worker {i} (pid {worker.pid}) still runs {SYNC_GRACE_SECONDS:.0f} s '
                      'after worker 0 ended: stopping it', flush=True)
        return status
    except KeyboardInterrupt:
        return 130
    finally:
        stop(workers, grace=SYNC_GRACE_SECONDS)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    chief_args = argv[argv.index('--') + 1:] if '--' in argv else []
    own = argv[:argv.index('--')] if '--' in argv else argv
    parser = config_lib.script_parser(__doc__)
    parser.add_argument('--mode', choices=('async', 'sync'), default='async',
                        help='async: ps and worker tasks and a chief; sync: peer workers')
    parser.add_argument('--num-ps', type=config_lib.positive_int, default=None,
                        help='parameter-server tasks (--mode async; default 1)')
    parser.add_argument('--num-workers', type=config_lib.positive_int, default=2,
                        help='worker tasks')
    parser.add_argument('--log-dir', default='runs/local_cluster',
                        help='where the logs of the background tasks go')
    args = parser.parse_args(own)
    config_lib.check_outputs(parser, args, folders=('log_dir',))
    if args.mode == 'sync':
        if args.num_ps is not None:
            parser.error('--num-ps is for --mode async: a synchronous cluster has workers only')
        return run_sync(args.num_workers, args.log_dir, chief_args)
    args.num_ps = args.num_ps or 1
    hosts = host_flags(args.num_ps, args.num_workers)
    chief = task_command('chief', 0, hosts) + chief_args
    train_distributed.parse_args(chief[2:])  # the chief's flags, before any task starts
    os.makedirs(args.log_dir, exist_ok=True)
    signal.signal(signal.SIGTERM, _terminate)
    tasks = []
    try:
        for job, count in (('ps', args.num_ps), ('worker', args.num_workers)):
            for i in range(count):
                log_path = os.path.join(args.log_dir, f'{job}{i}.log')
                tasks.append(start_task(job, i, hosts, log_path))
                print(f'{job} {i}: pid {tasks[-1].pid}, log {log_path}\n  restart with: '
                      f'{shlex.join(task_command(job, i, hosts))}', flush=True)
        print(f'chief: {shlex.join(chief)}', flush=True)
        tasks.insert(0, _start(chief))
        return tasks[0].wait()
    except KeyboardInterrupt:
        # Ctrl-C reached the chief too: let it say which checkpoint it will resume from.
        if tasks and tasks[0].args == chief:
            try:
                tasks[0].wait(timeout=CHIEF_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                pass
        return 130
    finally:
        stop(tasks)


if __name__ == '__main__':
    sys.exit(main())
