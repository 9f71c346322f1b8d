"""predict.py on videos: real clips written with OpenCV, predicted through the one inference path.

The clips are FFV1 (lossless), so the frames decoded are the frames written, and the colour
masks come back exactly: a frame of the output equals the colours of predict.py's class map of
the same frame saved as a PNG. A lossy codec would leave only a tolerance on colours that differ
by class, which could hide a wrong class near an edge. The clips are 66x98: OpenCV's writer
rounds odd sizes down to even.
"""
import os
import re
import signal
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

import predict
from libs.utils import visualize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEIGHT, WIDTH, FPS = 66, 98, 7.0


def _write_clip(path, num_frames, codec='FFV1'):
    """Smooth random colour fields moving frame to frame; returns the RGB frames."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (HEIGHT // 6 + 2, WIDTH // 6 + num_frames + 2, 3), np.uint8)
    wide = np.asarray(Image.fromarray(coarse).resize((6 * coarse.shape[1], 6 * coarse.shape[0]),
                                                     Image.BILINEAR))
    frames = [np.ascontiguousarray(wide[:HEIGHT, 6 * k:6 * k + WIDTH]) for k in range(num_frames)]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), FPS, (WIDTH, HEIGHT))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame[..., ::-1])
    writer.release()
    return frames


def _read_clip(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame[..., ::-1])
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return frames, fps


def test_video_frames_are_predicted_as_images(trained_run, tmp_path):
    frames = _write_clip(tmp_path / 'clip.avi', 5)
    out = tmp_path / 'out'
    assert predict.main(['--restore-from', trained_run.run_dir, '--input',
                         str(tmp_path / 'clip.avi'), '--output-dir', str(out), '--no-overlay',
                         '--video-codec', 'FFV1', '--flip']) == 0
    assert os.listdir(out) == ['clip.avi']  # no temporary left
    masks, fps = _read_clip(out / 'clip.avi')
    assert len(masks) == 5 and masks[0].shape == (HEIGHT, WIDTH, 3) and fps == FPS
    # Frame 3 saved as a PNG and predicted as an image, with the same options.
    Image.fromarray(frames[3]).save(tmp_path / 'frame3.png')
    assert predict.main(['--restore-from', trained_run.run_dir, '--input',
                         str(tmp_path / 'frame3.png'), '--output-dir', str(tmp_path / 'png'),
                         '--flip']) == 0
    classes = visualize.read_label_png(str(tmp_path / 'png' / 'frame3.png'))
    np.testing.assert_array_equal(masks[3], visualize.colorize(classes))
    # The overlay (the default) tints the frames themselves.
    assert predict.main(['--restore-from', trained_run.run_dir, '--input',
                         str(tmp_path / 'clip.avi'), '--output-dir', str(tmp_path / 'tinted'),
                         '--video-codec', 'FFV1', '--flip']) == 0
    tinted, _ = _read_clip(tmp_path / 'tinted' / 'clip.avi')
    np.testing.assert_array_equal(tinted[3], visualize.overlay(frames[3], classes))


def test_frames_larger_than_the_reference_canvas_are_refused_in_one_line(trained_run, tmp_path,
                                                                         capsys):
    _write_clip(tmp_path / 'clip.avi', 2)
    out = tmp_path / 'out'
    assert predict.main(['--restore-from', trained_run.run_dir, '--input',
                         str(tmp_path / 'clip.avi'), '--output-dir', str(out),
                         '--eval-crop-size', '33']) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'clip.avi'}: frame 1: an image of {HEIGHT}x{WIDTH} is larger than "
        "the reference's canvas 33x33 (--eval-crop-size)")
    assert os.listdir(out) == []  # nothing written, no temporary left


def test_an_unreadable_video_is_refused_in_one_line(tmp_path, capsys):
    broken = tmp_path / 'broken.mp4'
    broken.write_bytes(b'not a video' * 100)
    with pytest.raises(SystemExit):
        predict.main(['--restore-from', str(tmp_path), '--input', str(broken), '--output-dir',
                      str(tmp_path / 'out')])
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        f'error: {broken}: OpenCV cannot read it as a video (not a video, or a codec its FFmpeg '
        'lacks)')


def test_camera_without_a_display_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv('DISPLAY', raising=False)
    monkeypatch.delenv('WAYLAND_DISPLAY', raising=False)
    with pytest.raises(SystemExit):
        predict.main(['--restore-from', str(tmp_path), '--input', '0'])
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        'error: --input 0: no display to show the camera in (DISPLAY is not set); predict a '
        'video file instead')


@pytest.mark.slow
def test_ctrl_c_leaves_a_playable_video_of_the_frames_done(trained_run, tmp_path):
    """A real predict.py process interrupted mid-video: the default mp4v output holds exactly
    the frames it says it wrote, and plays."""
    _write_clip(tmp_path / 'long.avi', 400)
    out = tmp_path / 'out'
    process = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, 'predict.py'), '--restore-from', trained_run.run_dir,
         '--input', str(tmp_path / 'long.avi'), '--output-dir', str(out)],
        cwd=ROOT, stderr=subprocess.PIPE, text=True, bufsize=1,
        # SIGINT as a terminal delivers it: a suite started in the background passes it on to
        # its children as ignored, and Python keeps ignoring it (as test_robustness's Ctrl-C).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = ''
    while not any(int(n) >= 5 for n in re.findall(r'(\d+)/400 ', seen)):
        char = process.stderr.read(1)
        assert char, f'predict.py ended early:\n{seen}'
        seen += char
    process.send_signal(signal.SIGINT)
    rest = process.stderr.read()
    assert process.wait(timeout=120) == 130, seen + rest
    line = [x for x in rest.splitlines() if x.startswith('interrupted: wrote the ')][-1]
    done = int(line.split()[3])
    assert 5 <= done < 400 and line.endswith(f'of 400 to {out / "long.mp4"}')
    assert os.listdir(out) == ['long.mp4']
    frames, fps = _read_clip(out / 'long.mp4')
    assert len(frames) == done and frames[0].shape == (HEIGHT, WIDTH, 3) and fps == FPS
