"""Try train_distributed.py on one machine: ps and worker tasks on free 127.0.0.1 ports, then the
chief in the foreground; the tasks it started are stopped when the chief exits.

    .venv/bin/python launch_local_cluster.py --num-workers 2 -- --data-dir data/records \\
        --split-name train --num-layers 50 --batch-size 4 --input-size 97 --num-steps 200 \\
        --snapshot-dir runs/ps

Everything after `--` goes to the chief; those flags are checked before any task starts. The
tasks' pids and log files are printed first: kill a worker (`kill -9 PID`) to watch the run go on
without it, restart it with the printed command to watch it rejoin. The tasks and the chief end
with the launcher, however it ends (Ctrl-C, SIGTERM, even SIGKILL). Each launch picks new ports:
after a lost ps task, re-run the whole launcher command; the chief resumes from its last
checkpoint. See docs/distributed.md.
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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    chief_args = argv[argv.index('--') + 1:] if '--' in argv else []
    own = argv[:argv.index('--')] if '--' in argv else argv
    parser = config_lib.script_parser(__doc__)
    parser.add_argument('--num-ps', type=config_lib.positive_int, default=1,
                        help='parameter-server tasks')
    parser.add_argument('--num-workers', type=config_lib.positive_int, default=2,
                        help='worker tasks')
    parser.add_argument('--log-dir', default='runs/local_cluster',
                        help='where the ps and worker logs go')
    args = parser.parse_args(own)
    config_lib.check_outputs(parser, args, folders=('log_dir',))
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
