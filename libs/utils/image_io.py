"""Reading user photos for prediction, and writing RGB images atomically.

Photos come from anywhere: JPEG or PNG, greyscale, CMYK, palette, with an alpha channel, or taken
with the camera turned (EXIF orientation). Each is read as the upright RGB image a viewer shows.
"""
import contextlib
import glob
import os
import shutil
import socket
import tempfile

import numpy as np
from PIL import Image, ImageOps

from libs.utils import lock
from libs.utils.processes import alive

# Extensions picked up from a folder (lower case). A named file is read whatever its extension.
IMAGE_EXTENSIONS = ('.bmp', '.gif', '.jpeg', '.jpg', '.png', '.tif', '.tiff', '.webp')
OVERLAY_SUFFIX = '_overlay.jpg'


def list_images(spec):
    """The image files that a `--input` names: one file, a folder, or a glob pattern.

    Args:
        spec: a file (read whatever its extension), a folder (its files with an extension in
            `IMAGE_EXTENSIONS`, not recursive) or a glob pattern (every file it matches).

    Returns:
        Sorted list of paths (a single file: that file).

    Raises:
        FileNotFoundError: nothing matches `spec`.
        ValueError: two inputs share a file stem, so their outputs `<stem>.png` would collide.
    """
    if os.path.isfile(spec):
        paths = [spec]
    elif os.path.isdir(spec):
        paths = sorted(os.path.join(spec, name) for name in os.listdir(spec)
                       if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
                       and os.path.isfile(os.path.join(spec, name)))
        if not paths:
            raise FileNotFoundError(
                f'folder {spec} holds no image ({", ".join(IMAGE_EXTENSIONS)})')
    else:
        paths = sorted(p for p in glob.glob(spec) if os.path.isfile(p))
        if not paths:
            raise FileNotFoundError(f'{spec} is not a file or folder, and matches no file')
    by_stem = {}
    for path in paths:
        by_stem.setdefault(output_stem(path), []).append(path)
    clashes = [names for names in by_stem.values() if len(names) > 1]
    if clashes:
        raise ValueError('inputs would write the same output file: ' + '; '.join(
            ' and '.join(names) for names in clashes[:5]))
    return paths


def output_stem(path):
    """The file name of `path` without its extension: outputs are `<stem>.png` and so on."""
    return os.path.splitext(os.path.basename(path))[0]


def output_paths(path, output_dir, overlay):
    """The files predicting `path` writes: `<stem>.png` and, with `overlay`, the overlay."""
    stem = os.path.join(output_dir, output_stem(path))
    return [stem + '.png'] + ([stem + OVERLAY_SUFFIX] if overlay else [])


def read_rgb(path):
    """Reads an image file as upright RGB.

    The EXIF orientation tag is applied (a portrait photo stored landscape comes out portrait),
    then any mode (greyscale, CMYK, palette, 16-bit, alpha) is converted to RGB; alpha is dropped.

    Args:
        path: an image file in any format Pillow reads.

    Returns:
        uint8 array [H, W, 3].

    Raises:
        OSError: the file is missing, truncated or not an image (`PIL.UnidentifiedImageError`
            is an `OSError`).
    """
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
            # 16-bit greyscale: PIL's convert('RGB') would clip at 255 instead of scaling.
            values = np.asarray(image, dtype=np.float64)
            grey = np.round(np.clip(values / 65535.0, 0.0, 1.0) * 255.0).astype(np.uint8)
            return np.repeat(grey[..., None], 3, axis=2)
        return np.array(image.convert('RGB'), dtype=np.uint8)


@contextlib.contextmanager
def atomic_directory(output_dir, flag='--output-dir', log=None):
    """Yields a temporary folder beside `output_dir` to fill, and renames it to `output_dir` when
    the block succeeds, so that `output_dir` is either complete or absent (a server watching its
    parent never sees half an export). A killed writer leaves its `.tmp-<name>-<pid>-*` folder;
    the next call for `output_dir` removes those whose process is gone, and says so. The block
    holds `output_dir` (`lock.hold` on a lock file beside it), so that a second writer of the same
    folder is refused before it starts, not after its whole conversion when its rename fails.

    Args:
        output_dir: the folder to create; it must not exist, or be empty.
        flag: the flag that named it, for the refusals.
        log: called with one line per leftover removed.

    Raises:
        FileExistsError: `output_dir` exists and is not empty (nothing is written).
        lock.FolderInUse: another live process is writing `output_dir`; the message names it.
    """
    output_dir = os.path.abspath(output_dir)
    if os.path.exists(output_dir) and (not os.path.isdir(output_dir) or os.listdir(output_dir)):
        raise FileExistsError(f'{output_dir} already exists and is not empty; remove it or choose '
                              f'another {flag}')
    parent = os.path.dirname(output_dir)
    with lock.hold(parent, f'writing {output_dir}',
                   lock_file=f'.lock-{os.path.basename(output_dir)}', flag=flag):
        prefix = f'.tmp-{os.path.basename(output_dir)}-'
        for name in sorted(os.listdir(parent)):
            pid = name[len(prefix):].split('-')[0] if name.startswith(prefix) else ''
            if pid.isdigit() and not alive(int(pid)):
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
                if log:
                    log(f'Removed {os.path.join(parent, name)}, left by an earlier export that '
                        'was killed')
        tmp_dir = tempfile.mkdtemp(dir=parent, prefix=f'{prefix}{os.getpid()}-')
        try:
            yield tmp_dir
            os.chmod(tmp_dir, 0o755)  # mkdtemp makes it private; servers often run as another user
            # Renaming onto an empty folder replaces it; onto a non-empty one fails (never merges).
            os.replace(tmp_dir, output_dir)
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise


# Folders whose dead writers' temporary files this process has removed already.
_swept_folders = set()


def _host_prefix():
    # The host name keeps a sweep on a shared file system to the processes it can see.
    return f'.tmp-{socket.gethostname()}-'


def _remove_dead_temporaries(folder):
    """Removes the temporary files of `atomic_output` left in `folder` by processes of this host
    that are gone."""
    host_prefix = _host_prefix()
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        pid = name[len(host_prefix):].split('-')[0] if name.startswith(host_prefix) else ''
        path = os.path.join(folder, name)
        if pid.isdigit() and not alive(int(pid)) and os.path.isfile(path):
            try:
                os.remove(path)
            except OSError:
                pass  # another process swept it first, or the folder is read-only


def temporary_path(path):
    """A new empty file beside `path`, with its extension, named as `atomic_output`'s temporary
    files (so that a later write into the folder sweeps it when its process is gone), for writers
    that open files themselves (e.g. OpenCV's video writer); the caller renames or removes it."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix=f'{_host_prefix()}{os.getpid()}-',
                                    suffix=os.path.splitext(path)[1])
    os.close(fd)
    return tmp_path


@contextlib.contextmanager
def atomic_output(path, mode='wb'):
    """Opens a temporary file beside `path` for writing and renames it to `path` on success.

    A reader never sees half a file, even if the writer is killed; on an exception the temporary
    file is removed and `path` is left as it was. A writer killed outright (SIGKILL) leaves its
    `.tmp-<host>-<pid>-*` file; the first write of a later process into that folder removes the
    files of this host's processes that are gone.

    Args:
        path: destination; its folder must exist.
        mode: 'wb' or 'w' (UTF-8 text).
    """
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in _swept_folders:
        _remove_dead_temporaries(folder)
        _swept_folders.add(folder)
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix=f'{_host_prefix()}{os.getpid()}-',
                                    suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(fd, mode, **({} if 'b' in mode else {'encoding': 'utf-8'})) as f:
            yield f
        # mkstemp creates the file private (0600); give it the permissions `open` would.
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp_path, 0o666 & ~mask)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def save_image_atomic(path, image, quality=90):
    """Writes an RGB image (JPEG or PNG, from the extension) atomically (`atomic_output`).

    Args:
        path: destination; its folder must exist.
        image: uint8 array [H, W, 3], or a PIL image.
        quality: JPEG quality.
    """
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    extension = os.path.splitext(path)[1].lower()
    image_format = {'.jpg': 'JPEG', '.jpeg': 'JPEG', '.png': 'PNG'}.get(extension)
    if image_format is None:
        raise ValueError(f'{path}: expected a .jpg, .jpeg or .png name')
    options = {'quality': quality} if image_format == 'JPEG' else {}
    with atomic_output(path) as f:
        image.save(f, format=image_format, **options)
