"""Shared test set-up: quiet TensorFlow, the repo root importable, CPU only, and the test
process's memory handed back after each test."""
import ctypes
import gc
import os
import subprocess
import sys
import types

import pytest

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
# oneDNN's own allocator pools every large buffer and keeps the pool at the largest size it ever
# held; in one process running hundreds of tests that high-water mark only grows. The system
# allocator returns freed buffers (docs/performance.md, "The suite's memory"). Subprocesses
# inherit it. Numerics do not depend on it.
os.environ.setdefault('TF_ONEDNN_USE_SYSTEM_ALLOCATOR', '1')

import tensorflow as tf  # noqa: E402

# Deterministic training (`loop.make_deterministic`) needs one inter-op thread, which TensorFlow
# takes only before it initialises, and the test process initialises it early.
tf.config.threading.set_inter_op_parallelism_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from libs.utils.custom_gradients import released_custom_gradients  # noqa: E402

_LIBC = ctypes.CDLL('libc.so.6') if sys.platform.startswith('linux') else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """Releases the custom gradients the test's traced steps registered, which would keep their
    graphs and weights for the rest of the session (libs/utils/custom_gradients.py)."""
    with released_custom_gradients():
        yield


def pytest_collection_finish(session):
    """Moves everything imported so far (TensorFlow's ~350 000 objects) out of the collector's
    reach: the collection after each test then takes ~0.01 s instead of ~0.25 s."""
    gc.collect()
    gc.freeze()


def pytest_runtest_teardown(item, nextitem):
    """Frees what the test left (TensorFlow's graphs sit in reference cycles) and gives the
    freed heap back to the system, so that the next test starts from the same resident size."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


@pytest.fixture(scope='session')
def trained_run(tmp_path_factory):
    """A real (tiny) training run, made once per test session: the embedded sample dataset
    (4 train, 3 val images of 65-97 px) converted to TFRecords, and 2 steps of ResNet-50 at a
    65-pixel crop with train.py. Its weights are barely trained; use it for plumbing, not accuracy.

    Returns:
        namespace with `run_dir` (snapshot dir with config.json and checkpoint model-2),
        `voc_dir` (VOC layout) and `data_dir` (train and val shards).
    """
    from libs.datasets.voc_conversion import convert_split
    from libs.datasets.sample import write_sample_dataset
    root = tmp_path_factory.mktemp('trained_run')
    voc_dir, data_dir, run_dir = (str(root / name) for name in ('voc', 'records', 'run'))
    write_sample_dataset(voc_dir, num_train=4, num_val=3, size_range=(65, 97), seed=0)
    for split in ('train', 'val'):
        convert_split(voc_dir, split, data_dir, num_workers=1, progress=False)
    # A subprocess, so that training's global TensorFlow state stays out of the test process.
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'train.py'), '--data-dir', data_dir,
         '--split-name', 'train', '--num-layers', '50', '--batch-size', '2', '--input-size', '65',
         '--num-steps', '2', '--save-pred-every', '2', '--snapshot-dir', run_dir],
        cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f'train.py failed ({done.returncode}):\n{done.stdout[-3000:]}\n'
                    f'{done.stderr[-3000:]}')
    return types.SimpleNamespace(run_dir=run_dir, voc_dir=voc_dir, data_dir=data_dir)
