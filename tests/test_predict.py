"""predict.py on awkward inputs: odd sizes, greyscale, CMYK, EXIF rotation, broken files."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import predict
from libs.datasets import voc
from libs.utils import image_io
from libs.utils.frozen_weights import VARIABLE as FROZEN

EXIF_ORIENTATION = 0x0112
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _photo(height, width, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _write_inputs(folder):
    """Writes the awkward inputs; returns {file name: expected output (height, width)}."""
    os.makedirs(folder)
    Image.fromarray(_photo(67, 93)).save(os.path.join(folder, 'odd.png'))
    Image.fromarray(_photo(65, 71, 1)[..., 0]).save(os.path.join(folder, 'grey.jpg'))
    Image.fromarray(_photo(70, 81, 2)).convert('CMYK').save(os.path.join(folder, 'cmyk.jpg'))
    # Stored 66 high and 90 wide; orientation 6 means "rotate 90 degrees clockwise to view".
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    Image.fromarray(_photo(66, 90, 3)).save(os.path.join(folder, 'rotated.jpg'), exif=exif)
    return {'odd.png': (67, 93), 'grey.jpg': (65, 71), 'cmyk.jpg': (70, 81),
            'rotated.jpg': (90, 66)}


def test_predict_writes_palette_pngs_at_the_upright_input_size(trained_run, tmp_path):
    inputs = _write_inputs(tmp_path / 'in')
    out = tmp_path / 'out'
    flags = ['--restore-from', trained_run.run_dir, '--input', str(tmp_path / 'in'), '--scales',
             '0.75,1', '--flip']
    assert predict.main(flags + ['--output-dir', str(out), '--overlay']) == 0
    # In a process that imported TensorFlow first (this one, which also trains), main() leaves
    # oneDNN's frozen weights off; predict.py's own process turns them on
    # (libs/utils/frozen_weights.py), and predicts the same class maps to the byte.
    assert FROZEN not in os.environ
    frozen = tmp_path / 'frozen'
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'predict.py'), *flags,
                           '--output-dir', str(frozen)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in inputs:
        stem = os.path.splitext(name)[0]
        with open(out / f'{stem}.png', 'rb') as a, open(frozen / f'{stem}.png', 'rb') as b:
            assert a.read() == b.read(), name
    for name, (height, width) in inputs.items():
        stem = os.path.splitext(name)[0]
        with Image.open(out / f'{stem}.png') as mask:
            assert mask.mode == 'P'
            assert mask.size == (width, height), name
            assert mask.getpalette()[:3 * 256] == voc.palette_flat()
            assert np.array(mask).max() < voc.NUM_CLASSES
        with Image.open(out / f'{stem}_overlay.jpg') as overlay:
            assert overlay.format == 'JPEG' and overlay.mode == 'RGB'
            # The photo, and the legend to its right.
            assert overlay.width > width and overlay.height >= height


def test_read_rgb_applies_exif_orientation_and_converts_modes(tmp_path):
    stored = _photo(6, 10)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    Image.fromarray(stored).save(tmp_path / 'r.png', exif=exif)  # PNG: lossless pixels
    np.testing.assert_array_equal(image_io.read_rgb(tmp_path / 'r.png'), np.rot90(stored, k=-1))
    Image.fromarray(np.full((4, 5), 40000, np.uint16)).save(tmp_path / 'g16.png')
    np.testing.assert_array_equal(image_io.read_rgb(tmp_path / 'g16.png'),
                                  np.full((4, 5, 3), round(40000 / 65535 * 255), np.uint8))
    Image.fromarray(np.dstack([stored, np.zeros((6, 10), np.uint8)])).save(tmp_path / 'a.png')
    np.testing.assert_array_equal(image_io.read_rgb(tmp_path / 'a.png'), stored)


def test_a_broken_file_is_reported_and_skipped(trained_run, tmp_path, capsys):
    folder = tmp_path / 'in'
    folder.mkdir()
    Image.fromarray(_photo(65, 66)).save(folder / 'good.png')
    (folder / 'broken.jpg').write_bytes(b'this is not a JPEG')
    good_png = (folder / 'good.png').read_bytes()
    (folder / 'truncated.png').write_bytes(good_png[:len(good_png) // 2])
    out = tmp_path / 'out'
    status = predict.main(['--restore-from', trained_run.run_dir, '--input',
                           str(folder / '*.*'), '--output-dir', str(out)])
    assert status != 0
    stderr = capsys.readouterr().err
    assert 'broken.jpg' in stderr and 'truncated.png' in stderr
    assert 'good.png' not in stderr
    assert sorted(os.listdir(out)) == ['good.png']


def test_list_images(tmp_path):
    for name in ('b.jpg', 'a.PNG', 'notes.txt'):
        (tmp_path / name).write_bytes(b'')
    assert image_io.list_images(str(tmp_path)) == [str(tmp_path / 'a.PNG'),
                                                   str(tmp_path / 'b.jpg')]
    assert image_io.list_images(str(tmp_path / '*.txt')) == [str(tmp_path / 'notes.txt')]
    (tmp_path / 'b.png').write_bytes(b'')
    with pytest.raises(ValueError, match='same output'):
        image_io.list_images(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        image_io.list_images(str(tmp_path / 'missing*.jpg'))


def test_a_writer_killed_mid_file_leaves_a_temporary_that_the_next_write_removes(tmp_path):
    """kill -9 inside `atomic_output` leaves its `.tmp-<host>-<pid>-*` file; the next process to
    write into the folder removes it, and leaves those of live processes and other hosts."""
    import socket
    from libs.utils.image_io import atomic_output
    writer = subprocess.Popen(
        [sys.executable, '-c', 'import sys, time\n'
         'from libs.utils.image_io import atomic_output\n'
         f'with atomic_output({str(tmp_path / "a.png")!r}) as f:\n'
         '    f.write(b"half"); f.flush(); print("writing", flush=True); time.sleep(600)'],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == 'writing\n'
        assert writer.poll() is None  # killed while inside the block
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    host = socket.gethostname()
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(f'.tmp-{host}-{writer.pid}-'), left
    live = tmp_path / f'.tmp-{host}-{os.getpid()}-live.png'
    other_host = tmp_path / f'.tmp-otherhost-{writer.pid}-x.png'
    live.write_bytes(b'x')
    other_host.write_bytes(b'x')
    with atomic_output(str(tmp_path / 'b.png')) as f:
        f.write(b'whole')
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ['b.png', live.name, other_host.name])
