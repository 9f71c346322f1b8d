"""Writing TFRecord shards of one or several splits atomically, with the encoding spread over
worker processes.

Every converter (VOC, Cityscapes, ADE20K and folders through `conversion`, COCO in `coco`) ends
here: its validated entries are encoded in worker processes and written as
`{split}-%05d-of-%05d.tfrecord` shards under temporary names, renamed only once all of them,
those of every split of the run, are complete, so an error or Ctrl-C never leaves a partial shard
set, nor some splits of a run without the others.
A SIGKILL can leave temporaries: the next conversion of the split removes them (it holds the split
in that folder, so no other live conversion is writing them). The renames themselves follow a
journal (`.renames-<host>-<pid>`, written once every temporary is complete): a SIGKILL between two
renames, which would leave a split mixing this conversion's shards with an earlier one's, or some
splits of the run without the others, leaves the journal, and the next reader of the folder
(`tfrecord.list_shards`) or conversion into it completes the renames. The journal belongs to
`tfrecord`, which reads shard sets: this module imports it, never the reverse. Worker processes
end with the converter, however it ends.
"""
import concurrent.futures
import contextlib
import functools
import itertools
import logging
import multiprocessing
import os
import re
import signal

from tqdm import tqdm

from libs.utils import lock
from libs.utils.processes import die_with_parent

logger = logging.getLogger(__name__)


def default_num_shards(num_images):
    """4 shards up to 2000 images (deeplab's choice for train and val), 10 beyond (train_aug:
    ~1060 images, ~100 MB a shard, enough shards to split across input pipelines); never more
    shards than images."""
    return max(1, min(4 if num_images <= 2000 else 10, num_images))


def _start_worker(parent_pid):
    # Ctrl-C is handled by the parent, which stops the pool and removes temporaries; a parent
    # killed outright takes its workers with it instead of leaving them to init.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent_pid)


@contextlib.contextmanager
def worker_map(num_workers, num_items):
    """An ordered `map` over worker processes, or the builtin `map` for one worker.

    The mapped function and its items must be picklable (module-level functions, plain data).
    """
    num_workers = min(num_workers, num_items)
    if num_workers <= 1:
        yield map
        return
    # 'spawn', not 'fork': the parent may have loaded TensorFlow, which is not fork-safe.
    executor = concurrent.futures.ProcessPoolExecutor(
        num_workers, mp_context=multiprocessing.get_context('spawn'), initializer=_start_worker,
        initargs=(os.getpid(),))
    try:
        yield functools.partial(executor.map,
                                chunksize=max(1, min(16, num_items // (4 * num_workers))))
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _shard_sizes(num_items, num_shards):
    """Contiguous shard sizes that differ by at most one (split-list order is kept)."""
    bounds = [i * num_items // num_shards for i in range(num_shards + 1)]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def remove_stale_temporaries(output_dir, split_name, log=logger.warning):
    """Removes the temporary shards of `split_name` that a killed conversion left in `output_dir`.

    Call only while holding the split (as `write_shards` does). Returns the removed paths.
    """
    stale_re = re.compile(r'^\.' + re.escape(split_name) + r'-\d{5}-of-\d{5}\.tfrecord\.tmp-\d+$')
    removed = []
    for name in sorted(os.listdir(output_dir)):
        if stale_re.match(name):
            os.remove(os.path.join(output_dir, name))
            removed.append(os.path.join(output_dir, name))
            log('removed %s, left by an earlier conversion that was killed', removed[-1])
    return removed


def write_shards(items, encode, output_dir, split_name, num_shards, mapper=map, progress=True):
    """Writes `items` as `{split_name}-%05d-of-%05d.tfrecord` shards, atomically: `write_splits`
    of one split.

    Returns:
        The shard paths.
    """
    return write_splits({split_name: (items, num_shards)}, encode, output_dir, mapper,
                        progress)[split_name]


def write_splits(splits, encode, output_dir, mapper=map, progress=True):
    """Writes each split's items as `{split}-%05d-of-%05d.tfrecord` shards: all splits or none.

    Every split's shards are written under temporary names, and all are renamed only once all are
    complete; on any error (or Ctrl-C) the temporaries are removed and no shard of this run is
    left behind, in any split. Afterwards, shards of these splits with another shard count are
    removed. Each split is held in `output_dir` meanwhile (`lock.hold`): a second conversion of
    one of them into the same folder refuses; temporaries an earlier killed conversion left are
    removed first.

    Args:
        splits: {split name (the prefix of its shard names): (items, num_shards)}. Items are
            the entries to write, in order (contiguous runs of them form the shards);
            num_shards is at least 1, at most their count.
        encode: item -> the arguments of `tfrecord.make_example` (image bytes, format, id,
            height, width, label PNG bytes); a picklable function when `mapper` uses processes.
        output_dir: created when missing (and removed again if the write fails).
        mapper: an ordered map, e.g. from `worker_map`, that runs `encode`.
        progress: show tqdm progress bars on stderr.

    Returns:
        {split name: its shard paths}.
    Raises:
        lock.FolderInUse: another live conversion writes one of the splits into `output_dir`.
    """
    # TensorFlow (which tfrecord imports) is imported only here so that validation workers need
    # not load it.
    from libs.datasets import tfrecord

    created_dir = not os.path.isdir(output_dir)
    try:
        with contextlib.ExitStack() as held:
            # In one order, so that two conversions of overlapping splits cannot each hold one.
            for split_name in sorted(splits):
                held.enter_context(lock.hold(output_dir, f'converting split {split_name}',
                                             f'.{split_name}.lock', flag='--output-dir'))
            # First: a killed conversion's journal names temporaries that are complete shards.
            tfrecord.finish_interrupted_renames(output_dir)
            for split_name in sorted(splits):
                remove_stale_temporaries(output_dir, split_name)
            return _write_held(splits, encode, output_dir, mapper, progress)
    except BaseException:
        if created_dir and os.path.isdir(output_dir) and not os.listdir(output_dir):
            os.rmdir(output_dir)
        raise


def _write_held(splits, encode, output_dir, mapper, progress):
    import tensorflow as tf

    from libs.datasets import tfrecord

    names = {split_name: [tfrecord.shard_name(split_name, i, num_shards)
                          for i in range(num_shards)]
             for split_name, (_, num_shards) in splits.items()}
    temps = {split_name: [os.path.join(output_dir, f'.{name}.tmp-{os.getpid()}')
                          for name in split_names]
             for split_name, split_names in names.items()}
    try:
        for split_name, (items, num_shards) in splits.items():
            encoded = mapper(encode, items)
            with tqdm(total=len(items), desc=f'writing {split_name}', unit='img',
                      disable=not progress) as bar:
                for temp, size in zip(temps[split_name], _shard_sizes(len(items), num_shards)):
                    with tf.io.TFRecordWriter(temp) as writer:
                        for args in itertools.islice(encoded, size):
                            writer.write(tfrecord.make_example(*args).SerializeToString())
                            bar.update()
        journal = tfrecord.write_journal(output_dir, {
            'renames': [[os.path.basename(temp), name] for split_name in splits
                        for temp, name in zip(temps[split_name], names[split_name])],
            'splits': names})
    except BaseException:
        for temp in itertools.chain(*temps.values()):
            if os.path.exists(temp):
                os.remove(temp)
        raise
    # From here on the journal, not this process, decides: the renames complete even if it dies.
    tfrecord.apply_journal(output_dir, journal)
    return {split_name: [os.path.join(output_dir, name) for name in split_names]
            for split_name, split_names in names.items()}
