"""Shared test set-up: quiet TensorFlow, the repo root importable, CPU only."""
import os
import subprocess
import sys
import types

import pytest

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

import tensorflow as tf  # noqa: E402

# Deterministic training (`loop.make_deterministic`) needs one inter-op thread, which TensorFlow
# takes only before it initialises, and the test process initialises it early.
tf.config.threading.set_inter_op_parallelism_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


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
