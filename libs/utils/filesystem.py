"""File-system faults found before the expensive work, and reported in one line when they come late.

Every script checks what it will write with `check_writable` right after parsing its flags, and
wraps its `main` in `one_line_errors`, which turns an `OSError` or a TensorFlow `OpError` that
escapes (a disk that fills up during the run, a folder removed under it) into one line on stderr
naming the path and what to do, and exit status 1.
"""
import errno
import functools
import os
import sys
import tempfile

# What to do about the errors a user can fix, by errno.
_ADVICE = {
    errno.ENOSPC: 'the disk is full: free some space or choose a folder on another disk',
    errno.EDQUOT: 'the disk quota is exhausted: free some space or choose another folder',
    errno.EACCES: 'permission denied: choose a folder you can write to',
    errno.EPERM: 'operation not permitted: choose a folder you can write to',
    errno.EROFS: 'the file system is read-only: choose a folder on a writable disk',
    errno.ENOTDIR: 'a part of the path is a regular file, not a folder',
    errno.EISDIR: 'it is a folder, not a file',
    errno.ENOENT: 'no such file or folder',
}
_PROBE_BYTES = 4096
MAX_MESSAGE_CHARS = 400


def _nearest_existing(path):
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


def check_writable(path, flag, kind='folder'):
    """Checks that `path` can be created or written, without creating it.

    A missing folder is fine when its nearest existing ancestor is a writable folder. The check
    writes (and removes) a small file there, so that a read-only mount, a full disk or a missing
    permission shows up now, even for root, which ignores permission bits.

    Args:
        path: the folder or file that will be written.
        flag: the flag that named it, e.g. '--output-dir', for the message.
        kind: 'folder' or 'file'.
    Raises:
        ValueError: one line naming the flag, the path and what is wrong.
    """
    if kind == 'folder' and os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f'{flag} {path} is a file, not a folder')
    if kind == 'file' and os.path.isdir(path):
        raise ValueError(f'{flag} {path} is a folder; give a file name')
    folder = path if kind == 'folder' else os.path.dirname(os.path.abspath(path))
    existing = _nearest_existing(folder)
    if not os.path.isdir(existing):
        raise ValueError(f'{flag} {path}: {existing} is a regular file, not a folder')
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix='.write-check-')
    except OSError as e:
        raise ValueError(f'{flag} {path}: cannot create files in {existing}: '
                         f'{_ADVICE.get(e.errno, e.strerror)}') from None
    try:
        os.write(fd, b'\0' * _PROBE_BYTES)
        os.fsync(fd)
    except OSError as e:
        raise ValueError(f'{flag} {path}: cannot write in {existing}: '
                         f'{_ADVICE.get(e.errno, e.strerror)}') from None
    finally:
        os.close(fd)
        os.remove(probe)


def check_not_input(outputs, inputs, flag):
    """Refuses outputs that are one of the inputs, so that no input is ever written over.

    Args:
        outputs: paths that will be written.
        inputs: paths that are read.
        flag: the flag that chose the outputs, for the message.
    Raises:
        ValueError: naming both paths.
    """
    by_real_path = {os.path.realpath(p): p for p in inputs}
    for output in outputs:
        source = by_real_path.get(os.path.realpath(output))
        if source is not None:
            raise ValueError(f'{flag}: writing {output} would overwrite the input {source}; '
                             'choose another path')


def describe(error):
    """One line for an `OSError` or TensorFlow `OpError`: the path, the cause, what to do."""
    if isinstance(error, OSError):
        where = ' and '.join(str(p) for p in (error.filename, error.filename2) if p)
        cause = _ADVICE.get(error.errno, error.strerror or str(error))
        line = f'{where}: {cause}' if where else cause
    else:  # a TensorFlow OpError: its message names the path
        message = (error.message or str(error)).strip().splitlines()
        line = f'{type(error).__name__}: {message[0] if message else ""}'
        lowered = line.lower()
        if 'no space left' in lowered:
            line += f' ({_ADVICE[errno.ENOSPC]})'
        elif 'read-only file system' in lowered:
            line += f' ({_ADVICE[errno.EROFS]})'
        elif 'permission denied' in lowered:
            line += f' ({_ADVICE[errno.EACCES]})'
    return line[:MAX_MESSAGE_CHARS]


def is_file_system_error(error):
    """Whether `error` is an `OSError` or a TensorFlow `OpError` (TensorFlow is not imported)."""
    if isinstance(error, OSError):
        return True
    tf = sys.modules.get('tensorflow')
    return tf is not None and isinstance(error, tf.errors.OpError)


def one_line_errors(main):
    """Wraps a script's `main(argv)`: an `OSError` or TensorFlow `OpError` that escapes it is
    printed as one line (`describe`) on stderr, and the exit status is 1."""

    @functools.wraps(main)
    def wrapped(argv=None):
        try:
            return main(argv)
        except Exception as e:
            if not is_file_system_error(e):
                raise
            print(f'error: {describe(e)}', file=sys.stderr)
            return 1

    return wrapped
