"""Try train_distributed.py on one machine: ps and worker tasks on free 127.0.0.1 ports, then the
chief in the foreground; the tasks it started are stopped when the chief exits.

    python3 launch_local_cluster.py --num-workers 2 -- --data-dir data/records \\
        --split-name train --num-layers 50 --batch-size 4 --input-size 97 --num-steps 200 \\
        --snapshot-dir runs/ps

Everything after `--` goes to the chief. The tasks' pids and log files are printed first: kill a
worker (`kill -9 PID`) to watch the run go on without it, restart it with the printed command to
watch it rejoin. See docs/distributed.md.
"""
import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(ROOT, 'train_distributed.py')


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


def start_task(job, index, hosts, log_path):
    """Starts one ps or worker task in the background, its output in `log_path`."""
    with open(log_path, 'ab') as log:
        return subprocess.Popen(task_command(job, index, hosts), cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT)


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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    chief_args = argv[argv.index('--') + 1:] if '--' in argv else []
    own = argv[:argv.index('--')] if '--' in argv else argv
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--num-ps', type=int, default=1)
    parser.add_argument('--num-workers', type=int, default=2)
    parser.add_argument('--log-dir', default='runs/local_cluster',
                        help='where the ps and worker logs go')
    args = parser.parse_args(own)
    os.makedirs(args.log_dir, exist_ok=True)
    hosts = host_flags(args.num_ps, args.num_workers)
    tasks = []
    try:
        for job, count in (('ps', args.num_ps), ('worker', args.num_workers)):
            for i in range(count):
                log_path = os.path.join(args.log_dir, f'{job}{i}.log')
                tasks.append(start_task(job, i, hosts, log_path))
                print(f'{job} {i}: pid {tasks[-1].pid}, log {log_path}\n  restart with: '
                      f'{shlex.join(task_command(job, i, hosts))}', flush=True)
        chief = task_command('chief', 0, hosts) + chief_args
        print(f'chief: {shlex.join(chief)}', flush=True)
        return subprocess.call(chief, cwd=ROOT)
    except KeyboardInterrupt:
        return 130
    finally:
        stop(tasks)


if __name__ == '__main__':
    sys.exit(main())
