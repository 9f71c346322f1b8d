"""The asynchronous strategy of train_distributed.py: `ParameterServerStrategy` with a
`ClusterCoordinator`, and the cluster around it.

A cluster has one chief (runs the training loop: schedules steps on the workers, checkpoints, logs,
validates), one or more workers (run the steps they are given) and one or more ps tasks (hold the
variables). Workers update the variables on the ps tasks independently of each other
(asynchronous training). Every task is described by a TF_CONFIG, either taken from the environment
or built from the TF1-style flags `--job-name --task-index --ps-hosts --worker-hosts --chief-host`.

Errors a user can act on raise `ClusterError`, whose message names the task and its address.
"""
import errno
import json
import logging
import os
import re
import socket
import tempfile
import time

import tensorflow as tf

JOBS = ('chief', 'worker', 'ps')
# `tf.distribute` logs this when a worker stops answering; its closures go back into the queue.
_WORKER_FAILED = re.compile(r'^Worker \S+ failed with')
_WORKER_RECOVERED = re.compile(r'^Worker \S+ has been recovered')
_TASK_IN_MESSAGE = re.compile(r'/job:(?P<job>ps|worker|chief)/replica:0/task:(?P<index>\d+)')


class ClusterError(RuntimeError):
    """A cluster the chief cannot use, or a task that cannot start; the message names the task and
    its address."""


def task_name(job, index):
    return f'{job} {index}'


def parse_hosts(text, flag):
    """'h1:2222,h2:2222' -> ['h1:2222', 'h2:2222'].

    Raises:
        ValueError: naming `flag`, when an entry is not host:port with a port in 1..65535.
    """
    hosts = [h.strip() for h in (text or '').split(',') if h.strip()]
    for host in hosts:
        name, _, port = host.rpartition(':')
        if not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f'{flag}: {host!r} is not host:port (e.g. 10.0.0.1:2222)')
    return hosts


def tf_config_from_flags(job_name, task_index, ps_hosts, worker_hosts, chief_host):
    """The TF_CONFIG dict of the TF1-style flags.

    Args:
        job_name: 'ps', 'worker' or 'chief'.
        task_index: this task's index in its job's list.
        ps_hosts, worker_hosts: comma-separated host:port lists.
        chief_host: host:port of the chief.
    Raises:
        ValueError: naming the flag that is missing or malformed.
    """
    cluster = {'chief': parse_hosts(chief_host, '--chief-host'),
               'worker': parse_hosts(worker_hosts, '--worker-hosts'),
               'ps': parse_hosts(ps_hosts, '--ps-hosts')}
    for job, flag in (('chief', '--chief-host'), ('worker', '--worker-hosts'),
                      ('ps', '--ps-hosts')):
        if not cluster[job]:
            raise ValueError(f'{flag} is required (or set TF_CONFIG)')
    if len(cluster['chief']) != 1:
        raise ValueError(f'--chief-host takes one host:port, got {chief_host!r}')
    if job_name is None:
        raise ValueError('--job-name is required (ps, worker or chief), or set TF_CONFIG')
    return validate({'cluster': cluster, 'task': {'type': job_name, 'index': task_index}})


def tf_config_from_environment(text):
    """The TF_CONFIG dict of the environment variable's JSON text.

    Raises:
        ValueError: the text is not JSON, or not a cluster this script can run.
    """
    return validate(read_tf_config(text))


def read_tf_config(text):
    """The TF_CONFIG dict of JSON text, its task index 0 when left out; not validated.

    Raises:
        ValueError: the text is not JSON, or has no cluster or task.
    """
    try:
        tf_config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f'TF_CONFIG is not valid JSON ({e})') from None
    if not isinstance(tf_config, dict) or 'cluster' not in tf_config or 'task' not in tf_config:
        raise ValueError('TF_CONFIG must be {"cluster": {...}, "task": {"type": ..., '
                         '"index": ...}}')
    tf_config.setdefault('task', {}).setdefault('index', 0)
    return tf_config


def validate(tf_config):
    """Checks one task's view of the cluster on its own.

    Returns:
        `tf_config`.
    Raises:
        ValueError: an unknown or missing job, no task at this index, an address listed twice.
    """
    cluster, task = tf_config['cluster'], tf_config['task']
    unknown = sorted(set(cluster) - set(JOBS))
    if unknown:
        raise ValueError(f'the cluster has jobs {unknown}; only chief, worker and ps are used '
                         '(an "evaluator" is not part of this cluster)')
    for job in JOBS:
        if not cluster.get(job):
            raise ValueError(f'the cluster has no {job} task')
    if len(cluster['chief']) != 1:
        raise ValueError(f'the cluster must have one chief, got {cluster["chief"]}')
    job, index = task.get('type'), task.get('index')
    if job not in JOBS:
        raise ValueError(f'task type {job!r} is not one of {", ".join(JOBS)}')
    if not isinstance(index, int) or not 0 <= index < len(cluster[job]):
        raise ValueError(f'--task-index {index} is out of range: the cluster has '
                         f'{len(cluster[job])} {job} task(s) ({", ".join(cluster[job])})')
    seen = {}
    for other_job in JOBS:
        for i, address in enumerate(cluster[other_job]):
            if address in seen:
                raise ValueError(f'{address} is listed for both {seen[address]} and '
                                 f'{task_name(other_job, i)}: every task needs its own port')
            seen[address] = task_name(other_job, i)
    return tf_config


def task_address(tf_config):
    task = tf_config['task']
    return tf_config['cluster'][task['type']][task['index']]


def tasks(tf_config):
    """[(job, index, address)] of every task of the cluster."""
    return [(job, i, address) for job in JOBS
            for i, address in enumerate(tf_config['cluster'][job])]


def check_port_free(address, name):
    """Refuses to start a task on a port another process listens on.

    gRPC binds with SO_REUSEPORT, so without this a second server on a used port would start and
    silently share the port with the first.

    Raises:
        ClusterError: naming the task and the address.
    """
    port = int(address.rpartition(':')[2])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: connections of a killed predecessor in TIME_WAIT do not count as in use.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(('', port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ClusterError(f'{name} cannot start at {address}: port {port} is in use '
                                   '(another task or program listens there; pick another port '
                                   'in the host lists of every task)') from None
            raise ClusterError(f'{name} cannot bind port {port} of {address}: {e}') from None


def start_server(tf_config):
    """Starts the gRPC server of this ps or worker task; the caller then `join()`s it.

    Raises:
        ClusterError: the port is in use, or the server does not start.
    """
    job, index = tf_config['task']['type'], tf_config['task']['index']
    address = task_address(tf_config)
    check_port_free(address, task_name(job, index))
    config = None
    if job == 'worker':
        # tf.distribute's parameter-server tutorial gives workers more inter-op threads than a
        # small machine's core count ("workers need some inter_ops threads to work properly"):
        # a step's ops wait on RPCs to the ps tasks.
        config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=4)
    try:
        server = tf.distribute.Server(tf.train.ClusterSpec(tf_config['cluster']), job_name=job,
                                      task_index=index, protocol='grpc', config=config,
                                      start=True)
    except tf.errors.OpError as e:
        raise ClusterError(f'{task_name(job, index)} could not start its server at {address}: '
                           f'{e.message}') from None
    _write_view(tf_config)
    return server


def wait_for_tasks(tf_config, timeout, log):
    """Waits until every ps and worker task accepts connections, so that an unreachable one fails
    with its name and address instead of a hang inside TensorFlow.

    Raises:
        ClusterError: the first task still unreachable after `timeout` seconds.
    """
    waiting = [t for job in ('ps', 'worker') for t in tasks(tf_config) if t[0] == job]
    deadline = time.time() + timeout
    announced = False
    while waiting:
        job, index, address = waiting[0]
        host, _, port = address.rpartition(':')
        try:
            socket.create_connection((host.strip('[]'), int(port)), timeout=5).close()
            waiting.pop(0)
            continue
        except OSError as e:
            reason = e.strerror or str(e)
        if time.time() > deadline:
            raise ClusterError(
                f'{task_name(job, index)} at {address} is unreachable after {timeout:.0f} s '
                f'({reason}). Start it (train_distributed.py --job-name {job} --task-index '
                f'{index} with the same host lists), or correct the address in the host lists')
        if not announced:
            log(f'Waiting for {task_name(job, index)} at {address} ({reason}) ...')
            announced = True
        time.sleep(0.5)


def _view_file(address):
    """Where a ps or worker task leaves its own view of the cluster, on its own machine."""
    port = address.rpartition(':')[2]
    return os.path.join(tempfile.gettempdir(), f'deeplab_cluster_task_{port}.json')


def _write_view(tf_config):
    """Best effort: without the file the chief only skips the host-list check of this task."""
    path = _view_file(task_address(tf_config))
    try:
        with open(f'{path}.tmp-{os.getpid()}', 'w') as f:
            json.dump(tf_config, f)
        os.replace(f'{path}.tmp-{os.getpid()}', path)
    except OSError:
        pass


def _differences(mine, theirs):
    problems = []
    for job in JOBS:
        if mine['cluster'].get(job) != theirs['cluster'].get(job):
            problems.append(f'{job} hosts {",".join(theirs["cluster"].get(job, []))} (the chief '
                            f'has {",".join(mine["cluster"][job])})')
    return problems


def check_host_lists(tf_config, log):
    """Refuses a cluster whose tasks were started with other host lists than the chief's.

    TensorFlow itself does not notice: the chief's lists replace the tasks' own once it connects,
    so mismatched lists show up later as a task that is never used or a port nobody serves. Each
    ps and worker task of this script leaves its TF_CONFIG in a file on its machine
    (`start_server`); the chief reads it there, through TensorFlow, on that task's CPU. A task
    without the file (started by other means) is not checked.

    Raises:
        ClusterError: naming the task, its address and the lists that differ.
    """
    unchecked = []
    for job, index, address in tasks(tf_config):
        if job == 'chief':
            continue
        try:
            with tf.device(f'/job:{job}/replica:0/task:{index}/device:CPU:0'):
                text = tf.io.read_file(_view_file(address)).numpy()
        except tf.errors.NotFoundError:
            unchecked.append(task_name(job, index))
            continue
        theirs = json.loads(text)
        name = task_name(job, index)
        if (theirs['task']['type'], theirs['task']['index']) != (job, index):
            raise ClusterError(
                f'{name} at {address} was started as '
                f'{task_name(theirs["task"]["type"], theirs["task"]["index"])}: the host '
                'lists differ between tasks. Start every task with the same --ps-hosts, '
                '--worker-hosts and --chief-host')
        problems = _differences(tf_config, theirs)
        if problems:
            raise ClusterError(
                f'{name} at {address} was started with other host lists: '
                + '; '.join(problems) + '. Start every task with the same --ps-hosts, '
                '--worker-hosts and --chief-host')
    if unchecked:
        log(f'Host lists not checked for {", ".join(unchecked)} (not started by '
            'train_distributed.py, or on a machine with another temporary directory)')


class _WorkerEvents(logging.Filter):
    """Turns tf.distribute's log records about a worker (one per step it was running when it
    failed, and one when it is back) into one line of the run's log each.

    It filters the `tensorflow` logger: it sees the INFO records, and passes on only the records
    the logger showed before, so TensorFlow prints no more than it did.
    """

    def __init__(self, tf_config, log, shown_level):
        super().__init__()
        self.workers = tf_config['cluster']['worker']
        self.log = log
        self.shown_level = shown_level
        self.lost = set()

    def filter(self, record):
        message = str(record.msg)
        event = ('lost' if _WORKER_FAILED.match(message)
                 else 'back' if _WORKER_RECOVERED.match(message) else None)
        task = _TASK_IN_MESSAGE.search(str(record.args[0])) if event and record.args else None
        if task:
            self._report(event, int(task['index']))
        return record.levelno >= self.shown_level

    def _report(self, event, index):
        address = self.workers[index] if index < len(self.workers) else '?'
        if event == 'lost' and index not in self.lost:
            self.lost.add(index)
            self.log(f'Lost worker {index} at {address}: its steps go to the other workers '
                     'until it comes back (restart it with the same command)')
        elif event == 'back' and index in self.lost:
            self.lost.discard(index)
            self.log(f'Worker {index} at {address} is back and takes steps again')

    @classmethod
    def install(cls, tf_config, log):
        logger = tf.get_logger()
        shown = logger.getEffectiveLevel()
        logger.addFilter(cls(tf_config, log, shown))
        logger.setLevel(min(shown, logging.INFO))


def connect(tf_config, timeout, log):
    """The chief's strategy and coordinator, connected to every ps and worker task.

    Args:
        tf_config: the chief's TF_CONFIG dict.
        timeout: seconds to wait for every task to accept connections.
        log: where progress lines go; a lost worker is reported there too.
    Returns:
        (ParameterServerStrategy, ClusterCoordinator).
    Raises:
        ClusterError: the chief's port is in use, a task is unreachable, or was started with
            other host lists.
    """
    check_port_free(task_address(tf_config), 'chief 0')
    wait_for_tasks(tf_config, timeout, log)
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(tf_config['cluster']), task_type='chief', task_id=0,
        rpc_layer='grpc')
    strategy = tf.distribute.experimental.ParameterServerStrategy(resolver)
    check_host_lists(tf_config, log)
    coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(strategy)
    _WorkerEvents.install(tf_config, log)
    return strategy, coordinator


def describe_lost_task(error, cluster):
    """A one-line message for an `UnavailableError` the coordinator raised (a lost ps task).

    Args:
        error: the exception.
        cluster: {job: [address]}.
    """
    lost = sorted({(m['job'], int(m['index'])) for m in _TASK_IN_MESSAGE.finditer(str(error))
                   if m['job'] == 'ps'})
    if not lost:
        lost = sorted({(m['job'], int(m['index']))
                       for m in _TASK_IN_MESSAGE.finditer(str(error))})
    where = ', '.join(f'{task_name(job, i)} at {cluster[job][i]}' for job, i in lost
                      if i < len(cluster.get(job, ()))) or 'a task'
    return (f'lost {where}: the variables live on the ps tasks, so training cannot go on. '
            'Restart the ps task with the command that started it (the workers may keep '
            'running), then re-run the chief: it resumes from the last checkpoint. Under '
            'launch_local_cluster.py, re-run the launcher instead: it starts a new cluster')
