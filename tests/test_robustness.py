"""Issue 14: no input overwritten, no run clobbering another, every bad flag and file-system fault
refused in one line before the expensive work, and nothing left behind by a kill.

Real processes and signals throughout: the scripts run as a user runs them.
"""
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from libs.runs import leftovers
from libs.utils import lock
from libs.utils.processes import command_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONUNBUFFERED='1')
SCRIPTS = ('train.py', 'train_multi_gpu.py', 'train_distributed.py', 'evaluate.py', 'predict.py',
           'export.py', 'benchmark.py', 'convert_voc_to_tfrecord.py',
           'convert_coco_to_tfrecord.py', 'convert_cityscapes_to_tfrecord.py',
           'convert_ade20k_to_tfrecord.py', 'convert_folder_to_tfrecord.py',
           'launch_local_cluster.py', 'make_sample_dataset.py')


def run_script(*args, timeout=120, env=ENV):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=timeout)


def process_state(pid):
    """The state letter of a process ('R', 'S', 'Z', ...), or None when it is gone."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0]
    except FileNotFoundError:
        return None


def alive(pid):
    return process_state(pid) not in (None, 'Z')


def children_of(pid):
    """Pids of the live processes whose parent is `pid`."""
    found = []
    for name in os.listdir('/proc'):
        if name.isdigit():
            try:
                with open(f'/proc/{name}/stat') as f:
                    fields = f.read().rsplit(')', 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[1]) == pid and fields[0] != 'Z':
                found.append(int(name))
    return found


def wait_until(condition, timeout, interval=0.005):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


@contextlib.contextmanager
def started(command, **kwargs):
    """A process that is SIGKILLed (by pid) at the end if it is still running."""
    process = subprocess.Popen(command, cwd=ROOT, env=ENV, text=True, **kwargs)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def write_noise_voc(root, num_images, size, split='train'):
    """A VOC-layout folder of noise JPEGs (large, slow to write) with labels 0, 1 and 255."""
    rng = np.random.default_rng(0)
    for sub in ('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation'):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    ids = [f'2026_{i:06d}' for i in range(num_images)]
    label = np.zeros((size, size), np.uint8)
    label[size // 4:size // 2, size // 4:size // 2] = 1
    label[:2] = 255
    for image_id in ids:
        noise = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        Image.fromarray(noise).save(os.path.join(root, 'JPEGImages', f'{image_id}.jpg'),
                                    quality=95)
        Image.fromarray(label, 'L').save(os.path.join(root, 'SegmentationClass',
                                                      f'{image_id}.png'))
    with open(os.path.join(root, 'ImageSets/Segmentation', f'{split}.txt'), 'w') as f:
        f.write('\n'.join(ids) + '\n')
    return ids


# --- Every flag checked before TensorFlow starts ------------------------------------------------

BAD_FLAGS = [
    ('train.py', ['--batch-size', '0'], '--batch-size'),
    ('train.py', ['--num-classes', '0'], '--num-classes'),
    ('train.py', ['--log-every', '0'], '--log-every'),
    ('train.py', ['--save-pred-every', '0'], '--save-pred-every'),
    ('train.py', ['--input-size', '1'], '--input-size'),
    ('train.py', ['--learning-rate', 'nan'], '--learning-rate'),
    ('train.py', ['--momentum', '1.5'], '--momentum'),
    ('train.py', ['--weight-decay', '-inf'], '--weight-decay'),
    ('train.py', ['--multi-grid', '1,0,4'], '--multi-grid'),
    ('train.py', ['--min-scale', '2', '--max-scale', '1'], '--min-scale'),
    ('train.py', ['--num-classes', '300'], '--num-classes'),
    ('train_multi_gpu.py', ['--cpu-devices', '0'], '--cpu-devices'),
    ('train_distributed.py', ['--connect-timeout', 'inf'], '--connect-timeout'),
    ('train_distributed.py', ['--task-index', '-1'], '--task-index'),
    ('evaluate.py', ['--restore-from', 'r', '--scales', 'nan'], '--scales'),
    ('evaluate.py', ['--restore-from', 'r', '--scales', '1.0,inf'], '--scales'),
    ('evaluate.py', ['--restore-from', 'r', '--max-images', '0'], '--max-images'),
    ('predict.py', ['--restore-from', 'r', '--input', 'x', '--output-dir', 'o', '--scales', '0'],
     '--scales'),
    ('export.py', ['--restore-from', 'r', '--output-dir', 'o', '--scales', '-1'], '--scales'),
    ('benchmark.py', ['--steps', '0'], '--steps'),
    ('convert_voc_to_tfrecord.py', ['--voc-dir', 'v', '--output-dir', 'o', '--num-workers', '-3'],
     '--num-workers'),
    ('convert_voc_to_tfrecord.py', ['--voc-dir', 'v', '--output-dir', 'o', '--num-shards', '0'],
     '--num-shards'),
    ('convert_coco_to_tfrecord.py', ['--annotation-file', 'a', '--image-dir', 'i',
                                     '--output-dir', 'o', '--min-voc-pixels', '-1'],
     '--min-voc-pixels'),
    ('launch_local_cluster.py', ['--num-workers', '0'], '--num-workers'),
    ('launch_local_cluster.py', ['--', '--batch-size', '0'], '--batch-size'),
    ('make_sample_dataset.py', ['--output-dir', 'o', '--num-train', '0'], '--num-train'),
    ('convert_cityscapes_to_tfrecord.py', ['--cityscapes-dir', 'c', '--output-dir', 'o',
                                           '--num-shards', '0'], '--num-shards'),
    ('convert_folder_to_tfrecord.py', ['--image-dir', 'i', '--mask-dir', 'm', '--classes', 'c',
                                       '--output-dir', 'o', '--split-ratio', 'train=nan'],
     '--split-ratio'),
]


@pytest.mark.parametrize('script,flags,named', BAD_FLAGS,
                         ids=[f'{s}{" ".join(f)}' for s, f, _ in BAD_FLAGS])
def test_bad_numeric_flag_is_one_argparse_line(script, flags, named):
    done = run_script(script, *flags, timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f'{script}: error: ') and named in last, done.stderr
    assert 'Traceback' not in done.stderr
    # Refused by argparse itself: TensorFlow never started (it logs on start-up).
    assert 'tensorflow' not in done.stderr.lower() and 'cuda' not in done.stderr.lower()


def _help_entries(text):
    """{option: its help text} from an argparse --help."""
    entries, current = {}, None
    for line in text.splitlines():
        if line.startswith('  -'):
            invocation, _, help_text = line.strip().partition('  ')
            current = invocation.split()[0].rstrip(',')
            entries[current] = help_text.strip()
        elif current and line.startswith(' ' * 10) and line.strip():
            entries[current] += ' ' + line.strip()
        else:
            current = None
    return entries


@pytest.mark.parametrize('script', SCRIPTS)
def test_help_describes_every_flag_with_its_default_and_examples(script):
    done = run_script(script, '--help', timeout=60)
    assert done.returncode == 0, done.stderr
    entries = _help_entries(done.stdout)
    flags = set(re.findall(r'\[(--[a-z0-9-]+)', done.stdout.split('\n\n')[0]))
    flags |= set(re.findall(r' (--[a-z0-9-]+) [A-Z_]+', done.stdout.split('\n\n')[0]))
    assert flags and flags <= set(entries) | {'--help'}, (flags - set(entries), done.stdout)
    undocumented = [flag for flag, text in entries.items() if len(text.strip()) < 8]
    assert not undocumented, done.stdout
    assert done.stdout.count('(default:') >= len(entries) // 2
    assert f'.venv/bin/python {script}' in done.stdout  # the usage examples, in the epilog


# --- Data loss ----------------------------------------------------------------------------------

def test_predict_refuses_to_write_over_an_input_naming_both(trained_run, tmp_path):
    photos = tmp_path / 'photos'
    photos.mkdir()
    Image.fromarray(np.full((70, 90, 3), 120, np.uint8)).save(photos / 'cat.png')
    Image.fromarray(np.full((70, 90, 3), 30, np.uint8)).save(photos / 'dog.jpg')
    before = (photos / 'cat.png').read_bytes()
    done = run_script('predict.py', '--restore-from', trained_run.run_dir, '--input',
                      str(photos), '--output-dir', str(photos))
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert str(photos / 'cat.png') in last and 'would overwrite the input' in last
    assert (photos / 'cat.png').read_bytes() == before
    assert sorted(os.listdir(photos)) == ['cat.png', 'dog.jpg']


def test_evaluate_refuses_json_over_the_runs_config_or_a_shard(trained_run):
    config_path = os.path.join(trained_run.run_dir, 'config.json')
    shard = os.path.join(trained_run.data_dir, 'val-00000-of-00003.tfrecord')
    assert os.path.isfile(shard)
    for target in (config_path, shard):
        before = open(target, 'rb').read()
        done = run_script('evaluate.py', '--restore-from', trained_run.run_dir, '--data-dir',
                          trained_run.data_dir, '--output-json', target)
        assert done.returncode == 2
        assert f'would overwrite the input {target}' in done.stderr.strip().splitlines()[-1]
        assert open(target, 'rb').read() == before


def test_a_folder_lock_names_its_holder_and_dies_with_it(tmp_path):
    folder = tmp_path / 'run'
    holder_code = ('import sys, time; sys.path.insert(0, sys.argv[1])\n'
                   'from libs.utils import lock\n'
                   'with lock.hold(sys.argv[2], "training"):\n'
                   '    print("held", flush=True); time.sleep(300)')
    with started([sys.executable, '-c', holder_code, ROOT, str(folder)],
                 stdout=subprocess.PIPE) as holder:
        assert holder.stdout.readline().strip() == 'held'
        with pytest.raises(lock.FolderInUse, match=rf'{folder} is in use: training, pid '
                                                   rf'{holder.pid} on .*--snapshot-dir'):
            with lock.hold(str(folder), 'training'):
                pass
        assert alive(holder.pid)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    # The kernel released the killed holder's lock: the folder can be held again at once.
    with lock.hold(str(folder), 'training'):
        assert os.path.exists(folder / lock.LOCK_FILE)
    assert not os.path.exists(folder / lock.LOCK_FILE)


# --- A kill leaves nothing behind ---------------------------------------------------------------

def test_converter_killed_while_writing_leaves_no_worker_and_rerun_removes_temporaries(
        tmp_path):
    voc, out = tmp_path / 'voc', tmp_path / 'records'
    write_noise_voc(str(voc), num_images=240, size=320)
    command = [sys.executable, 'convert_voc_to_tfrecord.py', '--voc-dir', str(voc),
               '--split-name', 'train', '--output-dir', str(out), '--num-workers', '2']
    temp_re = re.compile(r'^\.train-\d{5}-of-\d{5}\.tfrecord\.tmp-(\d+)$')

    def temporaries():
        return [n for n in (os.listdir(out) if out.is_dir() else []) if temp_re.match(n)]

    with started(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as converter:
        assert wait_until(temporaries, timeout=120), 'the converter never started writing'
        workers = children_of(converter.pid)
        assert len(workers) >= 2 and all(alive(pid) for pid in workers)
        converter.send_signal(signal.SIGKILL)
        converter.wait(timeout=30)
    left = temporaries()
    assert left and all(temp_re.match(n)[1] == str(converter.pid) for n in left)
    assert wait_until(lambda: not any(alive(pid) for pid in workers), timeout=30), \
        [(pid, process_state(pid)) for pid in workers]

    rerun = run_script(*command[1:], timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for name in left:
        assert f'removed {out / name}' in rerun.stderr
    assert temporaries() == [] and not os.path.exists(out / '.train.lock')
    assert sorted(os.listdir(out)) == ['dataset.json'] + [
        f'train-{i:05d}-of-00004.tfrecord' for i in range(4)]


# A conversion of two splits, new shards in place of an earlier conversion's, that SIGKILLs
# itself right after its first shard rename: the moment a kill would leave a split mixing the two.
_KILLED_WHILE_RENAMING = """
import os, signal, sys
sys.path.insert(0, {root!r})
from libs.datasets import shards
real_replace = os.replace
def replace(source, target):
    real_replace(source, target)
    if target.endswith('.tfrecord'):
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
items = {{'train': ([(b'new-%d' % i, 'png', 'n%d' % i, 1, 1, b'') for i in range(4)], 2),
          'val': ([(b'new-v', 'png', 'nv', 1, 1, b'')], 1)}}
shards.write_splits(items, tuple, sys.argv[1], progress=False)
"""


def _write_old_conversion(out):
    from libs.datasets import shards
    shards.write_splits({'train': ([(b'old-%d' % i, 'png', f'o{i}', 1, 1, b'') for i in range(4)],
                                   2),
                         'val': ([(b'old-v', 'png', 'ov', 1, 1, b'')], 1)},
                        tuple, str(out), progress=False)


def _versions(out):
    """{shard name: 'new' or 'old'} of the shard files in `out`."""
    return {name: 'new' if b'new-' in (out / name).read_bytes() else 'old'
            for name in sorted(os.listdir(out)) if name.endswith('.tfrecord')}


@pytest.mark.parametrize('completed_by', ['reader', 'conversion'])
def test_conversion_killed_between_shard_renames_is_completed_by_the_next_reader_or_conversion(
        completed_by, tmp_path, caplog):
    from libs.datasets import shards, tfrecord
    out = tmp_path / 'records'
    _write_old_conversion(out)
    killed = subprocess.Popen([sys.executable, '-c', _KILLED_WHILE_RENAMING.format(root=ROOT),
                               str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, stderr = killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL, stderr[-2000:]
    # The situation: one split half renamed, the other not at all, the journal left.
    assert _versions(out) == {'train-00000-of-00002.tfrecord': 'new',
                              'train-00001-of-00002.tfrecord': 'old',
                              'val-00000-of-00001.tfrecord': 'old'}
    journals = [n for n in os.listdir(out) if n.startswith('.renames-')]
    assert journals == [f'.renames-{socket.gethostname()}-{killed.pid}']

    with caplog.at_level('WARNING', logger='libs.datasets.tfrecord'):
        if completed_by == 'reader':
            assert len(tfrecord.list_shards(str(out), 'train')) == 2
        else:  # the next conversion into the folder, of another split
            shards.write_splits({'test': ([(b'x', 'png', 't', 1, 1, b'')], 1)}, tuple, str(out),
                                progress=False)
    assert f'completed the renames of a conversion that was killed while renaming its shards ' \
           f'({out / journals[0]}): split(s) train, val' in caplog.text
    assert {name: version for name, version in _versions(out).items()
            if not name.startswith('test-')} == {'train-00000-of-00002.tfrecord': 'new',
                                                 'train-00001-of-00002.tfrecord': 'new',
                                                 'val-00000-of-00001.tfrecord': 'new'}
    # No journal, no temporary (the killed run's lock files are released: the kernel drops a
    # flock with its process, and the next conversion of the split removes the file).
    assert [n for n in os.listdir(out) if n.startswith('.') and not n.endswith('.lock')] == []


def test_checkpoint_save_killed_midway_leaves_temp_that_the_next_run_removes(tmp_path):
    """TensorFlow's `CheckpointManager` names its unfinished save `model-N_temp/`: a process
    killed while saving leaves it, and `remove_leftovers` clears it (as train.py does on start)."""
    snapshot = tmp_path / 'run'
    saver = ('import sys, tensorflow as tf\n'
             'v = tf.Variable(tf.random.normal([4000, 4000]))\n'
             'ckpt = tf.train.Checkpoint(v=v)\n'
             'm = tf.train.CheckpointManager(ckpt, sys.argv[1], 3, checkpoint_name="model")\n'
             'for i in range(1, 1000):\n'
             '    m.save(checkpoint_number=i)\n')

    def temp_dirs():
        names = os.listdir(snapshot) if snapshot.is_dir() else []
        return [n for n in names if re.fullmatch(r'model-\d+_temp', n)]

    with started([sys.executable, '-c', saver, str(snapshot)]) as process:
        # A save in progress after a complete one: the kill must not lose the complete one.
        assert wait_until(lambda: (snapshot / 'checkpoint').exists() and temp_dirs(),
                          timeout=120), 'no save was ever seen in progress'
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    import tensorflow as tf
    left = temp_dirs()
    assert left and tf.train.latest_checkpoint(str(snapshot)) is not None
    (snapshot / 'config.json.tmp-12345').write_text('{')
    lines = []
    removed = leftovers.remove_leftovers(str(snapshot), lines.append)
    assert sorted(removed) == sorted(str(snapshot / n) for n in left + ['config.json.tmp-12345'])
    assert temp_dirs() == [] and len(lines) == len(removed)
    assert all(n.startswith(('model-', 'checkpoint')) for n in os.listdir(snapshot))
    assert tf.train.latest_checkpoint(str(snapshot)) is not None


def _kill_launcher_and_check_children(how, records, tmp_path, serving):
    """Starts launch_local_cluster.py (1 ps, 1 worker, a chief with 1000 steps to go), sends it
    `how` once its three children run (and, with `serving`, once both tasks serve), and checks
    that every child ends."""
    logs = tmp_path / 'logs'
    command = [sys.executable, 'launch_local_cluster.py', '--num-ps', '1', '--num-workers', '1',
               '--log-dir', str(logs), '--', '--data-dir', records, '--split-name', 'train',
               '--num-layers', '50', '--batch-size', '2', '--input-size', '33',
               '--num-steps', '1000', '--snapshot-dir', str(tmp_path / 'run')]

    def tasks_serving():
        return all('serving at' in (logs / f'{task}.log').read_text(errors='replace')
                   for task in ('ps0', 'worker0'))

    with started(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as launcher:
        for line in launcher.stdout:
            if line.startswith('chief: '):
                break
        assert wait_until(lambda: len(children_of(launcher.pid)) == 3, timeout=30)
        if serving:
            assert wait_until(tasks_serving, timeout=180, interval=0.5)
        children = children_of(launcher.pid)

        def runs_train_distributed(pid):
            return any(arg.endswith('train_distributed.py') for arg in command_line(pid) or [])

        # A child still inside execve shows an empty command line for a moment (seen on a loaded
        # machine): wait for each to become train_distributed.py.
        for pid in children:
            assert wait_until(lambda pid=pid: runs_train_distributed(pid), timeout=30), (
                pid, command_line(pid), process_state(pid))
        assert len(children) == 3 and all(alive(pid) for pid in children)
        launcher.send_signal(how)
        status = launcher.wait(timeout=60)
    assert status == (-how if how == signal.SIGKILL else 128 + how)
    assert wait_until(lambda: not any(alive(pid) for pid in children), timeout=60), \
        [(pid, process_state(pid)) for pid in children]


@pytest.mark.parametrize('how', [signal.SIGKILL, signal.SIGTERM])
def test_killing_the_launcher_while_its_tasks_start_stops_them(how, trained_run, tmp_path):
    _kill_launcher_and_check_children(how, trained_run.data_dir, tmp_path, serving=False)


@pytest.mark.slow
def test_sigkill_of_the_launcher_stops_a_serving_cluster(trained_run, tmp_path):
    _kill_launcher_and_check_children(signal.SIGKILL, trained_run.data_dir, tmp_path,
                                      serving=True)


# --- File-system faults found early ------------------------------------------------------------

UNWRITABLE = [
    ('train.py', ['--snapshot-dir', '{f}/run'], '--snapshot-dir'),
    ('evaluate.py', ['--restore-from', 'r', '--output-json', '{f}/m.json'], '--output-json'),
    ('evaluate.py', ['--restore-from', 'r', '--report', '{f}/report'], '--report'),
    ('predict.py', ['--restore-from', 'r', '--input', 'x', '--output-dir', '{f}/out'],
     '--output-dir'),
    ('export.py', ['--restore-from', 'r', '--output-dir', '{f}/m'], '--output-dir'),
    ('convert_voc_to_tfrecord.py', ['--voc-dir', 'v', '--output-dir', '{f}/records'],
     '--output-dir'),
    ('make_sample_dataset.py', ['--output-dir', '{f}/voc'], '--output-dir'),
]


@pytest.mark.parametrize('script,flags,named', UNWRITABLE, ids=[s for s, _, _ in UNWRITABLE])
def test_output_under_a_regular_file_is_refused_at_parse_time(script, flags, named, tmp_path):
    regular = tmp_path / 'a_file'
    regular.write_text('not a folder')
    done = run_script(script, *[f.format(f=regular) for f in flags], timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert named in last and f'{regular} is a regular file, not a folder' in last
    assert 'Traceback' not in done.stderr and regular.read_text() == 'not a folder'


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs mounted for the test (needs the right to mount; skipped otherwise)."""
    mount = tmp_path / 'disk'
    mount.mkdir()
    done = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f'cannot mount a tmpfs here: {done.stderr.strip()}')
    try:
        yield mount
    finally:
        subprocess.run(['umount', str(mount)], check=True)


def test_read_only_disk_is_refused_before_the_work(small_disk, tmp_path):
    subprocess.run(['mount', '-o', 'remount,ro', str(small_disk)], check=True)
    done = run_script('convert_voc_to_tfrecord.py', '--voc-dir', str(tmp_path),
                      '--output-dir', str(small_disk / 'records'), timeout=60)
    assert done.returncode == 2
    assert 'read-only' in done.stderr.strip().splitlines()[-1]


def test_disk_full_while_writing_shards_is_one_line_and_leaves_nothing(small_disk, tmp_path):
    voc = tmp_path / 'voc'
    write_noise_voc(str(voc), num_images=40, size=256)  # ~7 MB of JPEGs for a 2 MB disk
    done = run_script('convert_voc_to_tfrecord.py', '--voc-dir', str(voc), '--output-dir',
                      str(small_disk / 'records'), '--num-workers', '1', timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and 'disk is full' in last, done.stderr[-2000:]
    assert 'Traceback' not in done.stderr
    assert os.listdir(small_disk) == []  # no shard, no temporary, not even the folder


# --- Messages ----------------------------------------------------------------------------------

def test_refusal_fits_a_screen_with_the_likely_cause_first(tmp_path):
    voc = tmp_path / 'voc'
    write_noise_voc(str(voc), num_images=25, size=65)
    done = run_script('convert_voc_to_tfrecord.py', '--voc-dir', str(voc), '--output-dir',
                      str(tmp_path / 'records'), '--label-dir', str(voc / 'JPEGImages'),
                      '--num-workers', '1')
    assert done.returncode == 1
    lines = done.stderr[done.stderr.index('error: refusing'):].strip().splitlines()
    assert lines[0] == ("error: refusing to convert split 'train': 25 of 25 entries are "
                        'invalid; nothing was written')
    assert lines[1].startswith(f'no label of this split is in {voc / "JPEGImages"}: is it the '
                               'right label folder')
    assert lines[2] == 'problems: missing label (25)'
    assert [line for line in lines if line.endswith(': missing label')] == lines[3:13]
    assert lines[13] == '  ... and 15 more' and len(lines) == 15
    assert not (tmp_path / 'records').exists()


# --- Labels that do not fit the model -----------------------------------------------------------

def test_evaluating_records_with_more_classes_than_the_model_is_refused(trained_run):
    from libs.datasets import input_pipeline, tfrecord
    from libs.evaluation import evaluator
    from libs.evaluation.inference import MultiScalePredictor
    from libs.nets.deeplabv3 import DeepLabV3
    files = tfrecord.list_shards(trained_run.data_dir, 'val')
    labels = set()
    for example in input_pipeline.eval_dataset(files):
        labels |= set(np.unique(example['label'].numpy()).tolist())
    assert max(labels - {255}) >= 6  # the sample dataset holds classes beyond 0..5
    model = DeepLabV3(num_classes=6, depth=50)
    predictor = MultiScalePredictor(model, 6, 16)
    with pytest.raises(ValueError, match=r': label (\d+) found, but the model has 6 classes '
                                         r'\(0\.\.5, 255 ignored\)'):
        evaluator.evaluate_dataset(predictor, input_pipeline.eval_dataset(files), 6,
                                   progress=False)


def _train_command(data_dir, snapshot_dir, num_steps, num_classes=21):
    return [sys.executable, 'train.py', '--data-dir', data_dir, '--split-name', 'train',
            '--num-layers', '50', '--batch-size', '2', '--input-size', '65',
            '--num-classes', str(num_classes), '--num-steps', str(num_steps),
            '--save-pred-every', '2', '--log-every', '1', '--snapshot-dir', snapshot_dir]


def test_training_on_labels_beyond_num_classes_is_one_line(trained_run, tmp_path):
    # Records with a description: the contradiction is refused before training starts.
    done = run_script(*_train_command(trained_run.data_dir, str(tmp_path / 'run'), 2,
                                      num_classes=6)[1:], timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f'error: --num-classes 6 contradicts the records: {trained_run.data_dir} holds voc2012 '
        'with 21 classes (leave --num-classes out to take theirs)')
    assert 'Starting from scratch' not in done.stdout  # refused before the model was built
    # Records converted without one: the first batch holding a label beyond the classes.
    records = tmp_path / 'records'
    shutil.copytree(trained_run.data_dir, records)
    os.remove(records / 'dataset.json')
    done = run_script(*_train_command(str(records), str(tmp_path / 'run2'), 2,
                                      num_classes=6)[1:], timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"error: the records of split 'train' in \S+ hold label (\d+), but the "
                        r'model has --num-classes 6 \(labels 0\.\.5, and --ignore-label 255\): '
                        r'give the class count the records were converted with', last), last
    assert int(re.search(r'hold label (\d+)', last)[1]) >= 6
    assert 'Traceback' not in done.stderr and len(done.stderr) < 5000


@pytest.mark.slow
def test_second_trainer_refused_then_ctrl_c_says_how_to_resume(trained_run, tmp_path):
    snapshot = str(tmp_path / 'run')
    # Far more steps than it can take while the second trainer starts on a loaded machine (400
    # were done once before the SIGINT came).
    command = _train_command(trained_run.data_dir, snapshot, 100000)
    # Ctrl-C as a terminal delivers it: a suite started in the background (`make test &`, a CI
    # runner without job control) passes SIGINT on as ignored, and Python then keeps ignoring it.
    with started(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) as first:
        for line in first.stdout:
            if line.startswith('saved '):
                break
        assert alive(first.pid)
        # Keep reading both pipes while the second trainer runs, so that the first never blocks
        # on a full pipe (a line a step and a save every 2 steps fill 64 KB within minutes).
        drained = {}
        readers = [threading.Thread(target=lambda name=name, pipe=pipe: drained.__setitem__(
            name, pipe.read()), daemon=True)
            for name, pipe in (('stdout', first.stdout), ('stderr', first.stderr))]
        for reader in readers:
            reader.start()
        second = run_script(*command[1:], timeout=300)
        assert first.poll() is None  # still training while the second was refused
        assert second.returncode == 1
        last = second.stderr.strip().splitlines()[-1]
        assert last.startswith(f'error: {snapshot} is in use: training, pid {first.pid} ')
        assert last.endswith('choose another --snapshot-dir')
        first.send_signal(signal.SIGINT)
        first.wait(timeout=240)
        for reader in readers:
            reader.join(timeout=60)
        stderr = drained['stderr']
    assert first.returncode == 130, stderr[-3000:]
    assert 'Traceback' not in stderr
    match = re.search(rf'interrupted; the last checkpoint is ({re.escape(snapshot)}/model-(\d+)) '
                      r'\(step (\d+)\): re-run the same command to resume from it', stderr)
    assert match and match[2] == match[3], stderr[-3000:]
    # Nothing of the interrupted run is left but its checkpoints, config and events.
    assert not [n for n in os.listdir(snapshot) if n.startswith('.') or '_temp' in n
                or '.tmp' in n]


def test_refused_training_leaves_no_snapshot_dir(tmp_path):
    snapshot = tmp_path / 'run'
    done = run_script(*_train_command(str(tmp_path / 'no_records'), str(snapshot), 2)[1:])
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f'error: TFRecord folder not found: {tmp_path / "no_records"}')
    assert not snapshot.exists()


def test_evaluate_shows_total_and_eta_and_creates_the_json_folder(trained_run, tmp_path):
    output = tmp_path / 'new' / 'folder' / 'val.json'
    done = run_script('evaluate.py', '--restore-from', trained_run.run_dir, '--data-dir',
                      trained_run.data_dir, '--split-name', 'val', '--output-json', str(output),
                      timeout=300, env={k: v for k, v in ENV.items()
                                        if k != 'TF_CPP_MIN_LOG_LEVEL'})
    assert done.returncode == 0, done.stderr[-3000:]
    bars = re.findall(r'evaluate:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+) \[[0-9:]+<([0-9:?]+)', done.stderr)
    assert bars and {total for _, total, _ in bars} == {'3'}  # the val split's 3 images
    assert bars[-1][0] == '3' and bars[-1][2] == '00:00'  # the ETA counted down to zero
    # With TensorFlow's default log level, its line about TFRecordDataset's buffer_size is gone.
    assert 'buffer_size' not in done.stderr
    assert json.loads(output.read_text())['num_images'] == 3


@pytest.mark.slow
def test_train_killed_mid_save_then_rerun_removes_the_unfinished_save(trained_run, tmp_path):
    snapshot = tmp_path / 'run'
    command = _train_command(trained_run.data_dir, str(snapshot), 40)
    command[command.index('--save-pred-every') + 1] = '1'

    def temp_dirs():
        names = os.listdir(snapshot) if snapshot.is_dir() else []
        return [n for n in names if re.fullmatch(r'model-\d+_temp', n)]

    with started(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as trainer:
        assert wait_until(lambda: (snapshot / 'checkpoint').exists() and temp_dirs(),
                          timeout=300), 'no save was ever seen in progress'
        trainer.send_signal(signal.SIGKILL)
        trainer.wait(timeout=30)
    left = temp_dirs()
    assert left
    # The same command (shortened: the run is past step 1 already) clears the unfinished save.
    command[command.index('--num-steps') + 1] = '1'
    rerun = run_script(*command[1:], timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for name in left:
        assert (f'Removed {snapshot / name}, left by an earlier run that did not finish writing '
                'it') in rerun.stdout
    assert 'Already at step' in rerun.stdout and temp_dirs() == []
    assert not [n for n in os.listdir(snapshot) if n.startswith('.') or '.tmp' in n]
