"""The synchronous strategy of train_distributed.py --mode sync: `MultiWorkerMirroredStrategy` over
the devices of several workers, with a stop that every worker agrees on.

Every worker is a peer running the same training loop; worker 0 (the chief) writes the snapshot
dir. Gradients and synchronised batch-norm statistics are all-reduced over every replica of every
worker (TensorFlow's AUTO collectives: NCCL on GPUs, a ring over gRPC on CPUs).
Errors a user can act on raise `cluster.ClusterError`, whose message names the task and its
address.
"""
import re
import signal
import socket

import tensorflow as tf
from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
from tensorflow.python.eager import context

from libs.training import cluster

JOB = 'worker'
# How TensorFlow's errors name a task (the peer of a reset connection, a task without heartbeats).
_WORKER_IN_MESSAGE = re.compile(r'/job:worker/replica:0/task:(\d+)')


def tf_config_from_flags(worker_hosts, task_index):
    """The TF_CONFIG dict of `--worker-hosts` and `--task-index`.

    Raises:
        ValueError: naming the flag that is missing or malformed.
    """
    hosts = cluster.parse_hosts(worker_hosts, '--worker-hosts')
    if not hosts:
        raise ValueError('--worker-hosts is required in --mode sync (or set TF_CONFIG)')
    return validate({'cluster': {JOB: hosts}, 'task': {'type': JOB, 'index': task_index}})


def validate(tf_config):
    """Checks one worker's view of a synchronous cluster: only workers, this task among them.

    Returns:
        `tf_config`.
    Raises:
        ValueError: another job (ps, chief, evaluator), no task at this index, an address listed
            twice.
    """
    jobs, task = tf_config['cluster'], tf_config['task']
    others = sorted(set(jobs) - {JOB})
    if others:
        raise ValueError(f'the cluster has jobs {others}: --mode sync takes workers only '
                         '(worker 0 is the chief); ps tasks belong to --mode async')
    hosts = jobs.get(JOB) or []
    if not hosts:
        raise ValueError('the cluster has no worker task')
    if task.get('type') != JOB:
        raise ValueError(f'task type {task.get("type")!r}: --mode sync runs worker tasks only')
    index = task.get('index')
    if not isinstance(index, int) or not 0 <= index < len(hosts):
        raise ValueError(f'--task-index {index} is out of range: the cluster has {len(hosts)} '
                         f'worker task(s) ({", ".join(hosts)})')
    for i, address in enumerate(hosts):
        if address in hosts[:i]:
            raise ValueError(f'{address} is listed for both worker {hosts.index(address)} and '
                             f'worker {i}: every task needs its own port')
    return tf_config


def connect(tf_config, heartbeat_timeout):
    """This worker's `MultiWorkerMirroredStrategy`, once every worker has joined.

    Must run before anything else initialises TensorFlow in this process. It waits for the other
    workers without end (TensorFlow 2.21 ignores the coordination service's registration
    timeout here, and neither a Python watchdog thread nor SIGTERM reached the waiting process;
    measured). The coordination service (hosted by worker 0) then watches every worker's
    heartbeat: when one stops answering for `heartbeat_timeout` seconds, the collective
    operations of the others fail instead of waiting for it forever. No timeout is set on the
    collectives themselves, so that the others may wait as long as the chief validates.

    Args:
        tf_config: from `tf_config_from_flags` or `cluster.read_tf_config` + `validate`.
        heartbeat_timeout: seconds after which a silent worker counts as lost.
    Raises:
        ClusterError: the port is in use, or TensorFlow could not set up the cluster.
    """
    hosts, index = tf_config['cluster'][JOB], tf_config['task']['index']
    cluster.check_port_free(hosts[index], cluster.task_name(JOB, index))
    context.context().configure_coordination_service(
        service_type='standalone', service_leader=f'/job:{JOB}/replica:0/task:0',
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name=JOB,
                                                                 num_tasks=len(hosts))],
        heartbeat_timeout_in_ms=int(heartbeat_timeout * 1000),
        shutdown_barrier_timeout_in_ms=int(heartbeat_timeout * 1000))
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec({JOB: hosts}), task_type=JOB, task_id=index, rpc_layer='grpc')
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.AUTO)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver,
                                                         communication_options=options)
    except tf.errors.OpError as e:
        raise cluster.ClusterError(f'worker {index} could not join the cluster: '
                                   f'{e.message.splitlines()[0]}') from None


def gone_workers(tf_config, error=None):
    """The indices of the other workers that are gone: their port no longer (or not yet) accepts
    connections, or `error` (a collective's `OpError`) names them (a worker that stopped sending
    heartbeats, or whose connection was reset)."""
    hosts, index = tf_config['cluster'][JOB], tf_config['task']['index']
    named = {int(i) for i in _WORKER_IN_MESSAGE.findall(str(error or ''))}
    gone = []
    for i, address in enumerate(hosts):
        if i == index:
            continue
        host, _, port = address.rpartition(':')
        try:
            socket.create_connection((host.strip('[]'), int(port)), timeout=5).close()
        except OSError:
            gone.append(i)
            continue
        if i in named:
            gone.append(i)
    return gone


def describe_workers(tf_config, indices):
    """'worker 1 (10.0.0.2:2222)', or several joined by commas."""
    hosts = tf_config['cluster'][JOB]
    return ', '.join(f'worker {i} ({hosts[i]})' for i in indices)


class StopSignal:
    """SIGTERM to any worker stops every worker at the same step boundary.

    A scheduler that preempts a job sends SIGTERM, possibly to one worker only. The handler only
    raises a flag; after every step each worker calls this object, which all-reduces the flags of
    every worker (one float per replica), so every worker sees the same answer after the same
    step, and the loop saves the checkpoint of that step and stops everywhere.

    TensorFlow's `tf.distribute.experimental.PreemptionCheckpointHandler` does the same through
    the coordination service, but in TF 2.21 it probes the GCE metadata server over the network
    when it is created (and does nothing on a GCE CPU machine), restores and saves with its own
    checkpoint manager (one checkpoint kept, its own variable added to the checkpoint) and ends
    the process with `sys.exit(42)`.

    Args:
        strategy: the `MultiWorkerMirroredStrategy` of the run.
    """

    def __init__(self, strategy):
        self.received = False

        @tf.function(autograph=False)
        def any_worker(flag):
            flags = strategy.run(tf.identity, args=(flag,))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, flags, axis=None) > 0

        self._any_worker = any_worker

    def install(self):
        """Makes SIGTERM raise this worker's flag instead of ending the process."""
        signal.signal(signal.SIGTERM, self._receive)
        return self

    def _receive(self, signum, frame):
        self.received = True

    def __call__(self):
        """Whether any worker received SIGTERM; a collective that every worker must join."""
        return bool(self._any_worker(tf.constant(float(self.received))))
