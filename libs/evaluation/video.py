"""Predicting videos and a camera: what `predict.py --input clip.mp4` (or `--input 0`) does.

Frames stream through three stages that overlap: a thread decodes (OpenCV) into a bounded queue,
the calling thread predicts each frame with the one inference path (a `MultiScalePredictor` of
`InferenceOptions`: scales, flips, windows, precision) and paints it, and a thread encodes from a
second bounded queue. The bounds keep memory flat whatever the length of the video.

The output video has the input's size and frame rate. It is written under a temporary name
beside it and renamed when the input ends, and also on Ctrl-C: the frames done so far then make
a complete, playable file (OpenCV's writer is closed, which writes the container's index, before
the rename; a second Ctrl-C meanwhile is ignored). A writer killed outright leaves its temporary
`.tmp-<host>-<pid>-*` file, which the next write into that folder removes.
"""
import dataclasses
import os
import queue
import signal
import sys
import threading

import numpy as np
from tqdm import tqdm

from libs.utils import image_io, visualize

# Extensions that make predict.py read --input as a video (any container OpenCV reads).
VIDEO_EXTENSIONS = ('.avi', '.m4v', '.mkv', '.mov', '.mp4', '.mpeg', '.mpg', '.webm', '.wmv')
# Codec of the output -> its container's extension. mp4v plays everywhere; MJPG is every frame a
# JPEG; FFV1 is lossless (the class colours come out exactly), and large.
CODECS = {'mp4v': '.mp4', 'MJPG': '.avi', 'FFV1': '.avi'}
QUEUE_FRAMES = 8
_END = object()


def is_video(spec):
    """Whether predict.py's --input names a video file (by its extension) or a camera (an
    index such as 0)."""
    return spec.isdigit() or os.path.splitext(spec)[1].lower() in VIDEO_EXTENSIONS


def output_path(path, output_dir, codec):
    """`<output_dir>/<stem><codec's extension>`."""
    return os.path.join(output_dir, image_io.output_stem(path) + CODECS[codec])


@dataclasses.dataclass
class VideoInfo:
    width: int
    height: int
    fps: float
    frames: int  # 0 where the container does not say


def open_video(path):
    """Opens a video file and checks that its first frame decodes.

    Returns:
        (cv2.VideoCapture, `VideoInfo`).
    Raises:
        ValueError: one line naming the file, when OpenCV cannot read it as a video.
    """
    import cv2
    if not os.path.isfile(path):
        raise ValueError(f'{path}: no such video file')
    capture = cv2.VideoCapture(path)
    ok = capture.isOpened()
    if ok:
        ok, _ = capture.read()
        capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
    if not ok:
        capture.release()
        raise ValueError(f'{path}: OpenCV cannot read it as a video (not a video, or a codec '
                         'its FFmpeg lacks)')
    info = VideoInfo(int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                     int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                     float(capture.get(cv2.CAP_PROP_FPS)) or 25.0,
                     max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0))
    return capture, info


def render(frame_rgb, label, class_colors, overlay):
    """The frame tinted with the classes (`visualize.overlay`), or the colour mask alone; RGB."""
    if overlay:
        return visualize.overlay(frame_rgb, label, class_colors=class_colors)
    return visualize.colorize(label, class_colors)


def predict_frame(predictor, frame_bgr):
    """The class map [H, W] of one OpenCV (BGR) frame, through the one inference path."""
    from libs.datasets import input_pipeline  # TensorFlow: not for predict.py's flag checks
    rgb = np.ascontiguousarray(frame_bgr[..., ::-1])
    return rgb, predictor.predict(input_pipeline.normalize(rgb, predictor.preprocessing)).numpy()


@dataclasses.dataclass
class VideoResult:
    output: str
    frames: int  # written
    total: int  # in the input (0: unknown)
    interrupted: bool


def _put(q, item, stop):
    """Puts into a bounded queue unless `stop` is set meanwhile."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def predict_video(predictor, path, output, class_colors=None, overlay=True, codec='mp4v',
                  progress=True, queue_frames=QUEUE_FRAMES, log=None):
    """Predicts every frame of a video file and writes the painted frames as a video.

    Args:
        predictor: has `predict(image)`, float32 normalized [H, W, 3] -> int [H, W].
        path: the input video.
        output: the output video (its folder must exist); its extension must suit `codec`.
        class_colors: (r, g, b) by class index, None for VOC's.
        overlay: frames tinted with the classes; False: the colour masks alone.
        codec: a key of `CODECS`.
        progress: a progress bar on stderr (frames done, total, ETA).
        queue_frames: frames each queue holds at most.
        log: called with a line about an odd-sized input.
    Returns:
        `VideoResult`; on Ctrl-C the frames done so far are written and `interrupted` is True.
    Raises:
        ValueError: the input cannot be read as a video, `output` cannot be written with
            `codec`, or the predictor refuses a frame (the message names the file and frame);
            nothing is written then.
    """
    import cv2
    capture, info = open_video(path)
    # OpenCV's FFmpeg writer rounds odd sizes down to even (measured with OpenCV 5.0 for every
    # codec, FFV1 included); say so and crop here, rather than leave it to the writer. Videos
    # coded in 4:2:0, nearly all, are even-sized anyway.
    width, height = info.width - info.width % 2, info.height - info.height % 2
    if (width, height) != (info.width, info.height) and log is not None:
        log(f'{path} is {info.width}x{info.height}; OpenCV writes even sizes only: the output '
            f'is {width}x{height} (last column or row dropped)')
    tmp = image_io.temporary_path(output)
    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*codec), info.fps, (width, height))
    if not writer.isOpened():
        capture.release()
        os.remove(tmp)
        raise ValueError(f'{output}: OpenCV cannot write {codec} video into '
                         f'{os.path.splitext(output)[1]}')
    decoded, painted = queue.Queue(queue_frames), queue.Queue(queue_frames)
    stop = threading.Event()
    written, failures = [0], []

    def read():
        try:
            while not stop.is_set():
                ok, frame = capture.read()
                if not ok or not _put(decoded, frame, stop):
                    break
        finally:
            _put(decoded, _END, stop)

    def write():
        while True:
            frame = painted.get()
            if frame is _END:
                return
            if failures:
                continue  # keep emptying the queue, so that the predicting thread never blocks
            try:
                writer.write(frame)
                written[0] += 1
            except Exception as e:  # re-raised in the calling thread
                failures.append(e)

    reader = threading.Thread(target=read, name='video-decode', daemon=True)
    encoder = threading.Thread(target=write, name='video-encode', daemon=True)
    reader.start()
    encoder.start()
    interrupted = finished = False
    bar = tqdm(total=info.frames or None, file=sys.stderr, disable=not progress, desc='predict',
               unit='frame')
    try:
        while True:
            frame = decoded.get()
            if frame is _END:
                break
            try:
                rgb, label = predict_frame(predictor, frame)
            except ValueError as e:  # e.g. frames larger than --eval-crop-size's canvas
                raise ValueError(f'{path}: frame {bar.n + 1}: {e}') from None
            painted.put(np.ascontiguousarray(
                render(rgb, label, class_colors, overlay)[:height, :width, ::-1]))
            bar.update()
        finished = True
    except KeyboardInterrupt:
        interrupted = True
    finally:
        # Finishing the file must not be cut short by a second Ctrl-C.
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
        try:
            bar.close()
            stop.set()
            painted.put(_END)
            encoder.join()
            reader.join()
            writer.release()
            capture.release()
            if written[0] and (finished or interrupted) and not failures:
                os.chmod(tmp, 0o644)
                os.replace(tmp, output)
            else:
                os.remove(tmp)
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous)
    if failures:
        raise failures[0]
    return VideoResult(output if written[0] else None, written[0], info.frames, interrupted)


def check_camera(camera, window='DeepLabV3'):
    """Refuses, before any model loads, a camera that cannot be shown: no display, OpenCV built
    without windows (opencv-python-headless), or no such camera.

    Raises:
        ValueError: one line naming the camera and what is missing.
    """
    import cv2
    if sys.platform.startswith('linux') and not (os.environ.get('DISPLAY')
                                                 or os.environ.get('WAYLAND_DISPLAY')):
        raise ValueError(f'--input {camera}: no display to show the camera in (DISPLAY is not '
                         'set); predict a video file instead')
    try:
        cv2.namedWindow(window)
        cv2.destroyWindow(window)
    except cv2.error:
        raise ValueError(f'--input {camera}: this OpenCV has no windows (opencv-python-headless);'
                         ' pip install opencv-python to show the camera') from None
    capture = cv2.VideoCapture(int(camera))
    try:
        if not capture.isOpened() or not capture.read()[0]:
            raise ValueError(f'--input {camera}: camera {camera} cannot be opened')
    finally:
        capture.release()


def show_camera(predictor, camera, class_colors=None, overlay=True, window='DeepLabV3'):
    """Shows camera `camera`'s frames painted with the predicted classes in a window until `q`
    (or Esc, Ctrl-C, or the window is closed).

    Raises:
        ValueError: as `check_camera`.
    """
    import cv2
    check_camera(camera, window)
    capture = cv2.VideoCapture(int(camera))
    cv2.namedWindow(window)
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            rgb, label = predict_frame(predictor, frame)
            cv2.imshow(window, np.ascontiguousarray(
                render(rgb, label, class_colors, overlay)[..., ::-1]))
            key = cv2.waitKey(1) & 0xFF
            if key in (ord('q'), 27) or cv2.getWindowProperty(window,
                                                              cv2.WND_PROP_VISIBLE) < 1:
                break
    except KeyboardInterrupt:
        pass  # as q
    finally:
        capture.release()
        cv2.destroyAllWindows()
