"""Train DeepLabV3 on several servers: asynchronously (--mode async, ParameterServerStrategy) or
synchronously (--mode sync, MultiWorkerMirroredStrategy).

--mode sync: start the same command on every worker, each with its own --task-index:

    .venv/bin/python train_distributed.py --mode sync --worker-hosts h1:2222,h2:2222 \\
        --task-index 0 --data-dir data/records --split-name train_aug --snapshot-dir runs/sync

Every worker runs the training loop on its local GPUs; gradients and batch-norm statistics are
all-reduced over every replica of every worker, and --batch-size is the global batch. Worker 0
writes the snapshot dir (which every worker reads on resume: shared storage, like --data-dir).
SIGTERM to any worker saves a checkpoint at the next step and stops every worker (exit status
42); a lost worker stops the others within --heartbeat-timeout (status 3). Re-running the same
commands resumes from the last checkpoint.

--mode async (the default): start every ps and worker task, then the chief, all with the same host
lists:

    .venv/bin/python train_distributed.py --job-name ps --task-index 0 $HOSTS
    .venv/bin/python train_distributed.py --job-name worker --task-index 0 $HOSTS
    .venv/bin/python train_distributed.py --job-name worker --task-index 1 $HOSTS
    .venv/bin/python train_distributed.py --job-name chief $HOSTS --data-dir data/records \\
        --split-name train_aug --snapshot-dir runs/ps

with HOSTS="--ps-hosts h0:2222 --worker-hosts h1:2222,h2:2222 --chief-host h3:2222". A TF_CONFIG
in the environment is used instead of these flags. ps and worker tasks serve until killed; the
chief runs the loop and exits when the global step reaches --num-steps. Workers take steps
independently against the variables on the ps tasks; each step uses --batch-size images. A worker
may die and be restarted with the same command; re-running the chief resumes from its last
checkpoint; the resumed workers read the data in new orders (exact continuation, and
--deterministic, are for train.py, train_multi_gpu.py and --mode sync). See docs/distributed.md.
"""
import json
import os
import sys

import config as config_lib
from libs.utils import filesystem


def parse_args(argv=None):
    parser = config_lib.build_train_parser(__doc__)
    parser.add_argument('--mode', choices=('async', 'sync'), default='async',
                        help='async: ParameterServerStrategy (ps, worker and chief tasks); sync: '
                             'MultiWorkerMirroredStrategy (worker tasks only, worker 0 writes)')
    g = parser.add_argument_group('cluster (ignored when TF_CONFIG is set)')
    g.add_argument('--job-name', choices=('ps', 'worker', 'chief'),
                   help="this process's job: ps and worker tasks serve, the chief trains "
                        '(--mode sync: worker only)')
    g.add_argument('--task-index', type=config_lib.non_negative_int, default=0,
                   help="index in the job's host list")
    g.add_argument('--ps-hosts', help='host:port,... of the ps tasks')
    g.add_argument('--worker-hosts', help='host:port,... of the worker tasks')
    g.add_argument('--chief-host', help='host:port of the chief')
    g.add_argument('--connect-timeout', type=config_lib.positive_float, default=300.0,
                   help='--mode async: seconds the chief waits for every ps and worker to accept '
                        'connections')
    g.add_argument('--heartbeat-timeout', type=config_lib.positive_float, default=30.0,
                   help='--mode sync: seconds after which a worker that stopped answering counts '
                        'as lost and the others stop')
    args = config_lib.parse_train_args(parser, argv, check_snapshot_dir=False)
    if args.mode == 'sync':
        _check_sync_args(parser, args)
        return args
    if args.deterministic:
        parser.error('--deterministic cannot make asynchronous training reproducible: workers '
                     'apply their updates in the order they finish and crop with seeds from '
                     'their clocks; use --mode sync, train.py or train_multi_gpu.py for a '
                     'reproducible run')
    # Only the chief writes the snapshot dir; ps and worker tasks write nothing.
    if _job_name(args) == 'chief':
        config_lib.check_outputs(parser, args, folders=('snapshot_dir',))
    return args


def _check_sync_args(parser, args):
    for flag in ('ps_hosts', 'chief_host'):
        if getattr(args, flag):
            parser.error(f'--{flag.replace("_", "-")} is for --mode async: a synchronous cluster '
                         'has workers only (worker 0 is the chief)')
    if args.job_name not in (None, 'worker'):
        parser.error(f'--job-name {args.job_name}: --mode sync runs worker tasks only')
    # Only worker 0 writes the snapshot dir.
    if _task_index(args) == 0:
        config_lib.check_outputs(parser, args, folders=('snapshot_dir',))


def _task_index(args):
    """This task's index, from TF_CONFIG when set, else --task-index (None if TF_CONFIG is
    unreadable: `cluster.read_tf_config` reports that)."""
    if not os.environ.get('TF_CONFIG'):
        return args.task_index
    try:
        return json.loads(os.environ['TF_CONFIG'])['task'].get('index', 0)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _job_name(args):
    """This task's job, from TF_CONFIG when set, else --job-name (None if TF_CONFIG is unreadable:
    `cluster.tf_config_from_environment` reports that)."""
    if not os.environ.get('TF_CONFIG'):
        return args.job_name
    try:
        return json.loads(os.environ['TF_CONFIG'])['task']['type']
    except (ValueError, KeyError, TypeError):
        return None


def _sync_main(args):
    """One worker of a synchronous run; returns its exit status."""
    import tensorflow as tf

    from libs.training import cluster, multi_worker, runner
    try:
        if os.environ.get('TF_CONFIG'):
            tf_config = multi_worker.validate(cluster.read_tf_config(os.environ['TF_CONFIG']))
            source = 'TF_CONFIG'
        else:
            tf_config = multi_worker.tf_config_from_flags(args.worker_hosts, args.task_index)
            source = 'flags'
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    index, workers = tf_config['task']['index'], tf_config['cluster']['worker']
    if args.deterministic:
        from libs.training.loop import make_deterministic
        make_deterministic()  # before the strategy initialises TensorFlow
    print(f'worker {index} at {workers[index]} (cluster from {source}): waiting for '
          f'{len(workers)} worker(s) to join', flush=True)
    try:
        strategy = multi_worker.connect(tf_config, args.heartbeat_timeout)
    except cluster.ClusterError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(f'worker {index}: {strategy.num_replicas_in_sync} replica(s) in all '
          f'({", ".join(strategy.extended.worker_devices)} here); '
          + ('it writes the snapshot dir' if index == 0 else 'worker 0 writes the snapshot dir'),
          flush=True)
    config = config_lib.config_from_args(args)
    stop = multi_worker.StopSignal(strategy).install()
    try:
        return runner.run_training(config, strategy=strategy, writes=index == 0, stop=stop)
    except (OSError, tf.errors.OpError) as e:
        gone = multi_worker.gone_workers(tf_config, e)
        if not gone:
            print(f'error: {filesystem.describe(e)}', file=sys.stderr)
            return 1
        print(f'error: {multi_worker.describe_workers(tf_config, gone)} is gone: a synchronous '
              'run cannot go on without it, and nothing was saved after the last checkpoint. '
              'Re-run the command of every worker (under launch_local_cluster.py, the launcher) '
              'to resume from it', file=sys.stderr)
        return 3


@filesystem.one_line_errors
def main(argv=None):
    args = parse_args(argv)
    if args.mode == 'sync':
        status = _sync_main(args)
        sys.stdout.flush()
        sys.stderr.flush()
        # TensorFlow's exit would wait at the coordination service's shutdown barrier for the
        # other workers, which may be gone; the run is over.
        os._exit(status)
    import tensorflow as tf

    from libs.training import cluster, runner
    try:
        if os.environ.get('TF_CONFIG'):
            tf_config = cluster.tf_config_from_environment(os.environ['TF_CONFIG'])
            source = 'TF_CONFIG'
        else:
            tf_config = cluster.tf_config_from_flags(args.job_name, args.task_index,
                                                     args.ps_hosts, args.worker_hosts,
                                                     args.chief_host)
            source = 'flags'
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    job, index = tf_config['task']['type'], tf_config['task']['index']
    address = cluster.task_address(tf_config)
    try:
        if job in ('ps', 'worker'):
            server = cluster.start_server(tf_config)
            print(f'{job} {index} serving at {address} (cluster from {source}); it runs until '
                  'killed', flush=True)
            server.join()
            return 0
        strategy, coordinator = cluster.connect(tf_config, args.connect_timeout,
                                                log=lambda line: print(line, flush=True))
    except cluster.ClusterError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(f'chief at {address} (cluster from {source}): {len(tf_config["cluster"]["worker"])} '
          f'worker(s), {len(tf_config["cluster"]["ps"])} ps task(s)', flush=True)
    config = config_lib.config_from_args(args)
    try:
        status = runner.run_training(config, strategy=strategy, coordinator=coordinator)
    except tf.errors.UnavailableError as e:
        # The coordinator re-schedules the steps of lost workers; a lost ps task ends up here.
        print(f'error: {cluster.describe_lost_task(e, tf_config["cluster"])} '
              f'({config.snapshot_dir})', file=sys.stderr)
        status = 3
    except (OSError, tf.errors.OpError) as e:
        # Here rather than in `one_line_errors`: the chief must still leave through os._exit.
        print(f'error: {filesystem.describe(e)}', file=sys.stderr)
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # The coordinator's threads would keep waiting for lost workers; the run is over.
    os._exit(status)


if __name__ == '__main__':
    sys.exit(main())
