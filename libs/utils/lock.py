"""Holding a folder for one process: a second run on the same folder refuses, naming the holder.

The lock is an OS-level `flock` on a small file inside the folder, which also records who holds it
(what it does, pid, host, start time) for the refusal message; a refusal on the same host adds
the holder's command line, read from /proc by its pid. The kernel releases a `flock` when
its process ends, however it ends, so a killed run never leaves the folder held.
"""
import contextlib
import datetime
import fcntl
import os
import re
import socket

from libs.utils import processes

LOCK_FILE = '.lock'


class FolderInUse(RuntimeError):
    """Another live process holds the folder; the message names it."""


def _holder_description():
    started = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')
    return f'pid {os.getpid()} on {socket.gethostname()}, started {started}'


def _with_command(holder):
    """The recorded holder, with its command line when it runs on this host."""
    match = re.search(r'pid (\d+) on (\S+),', holder)
    if not match or match[2] != socket.gethostname():
        return holder
    arguments = processes.command_line(int(match[1]))
    # Any newline inside an argument would break the one-line message.
    command = ' '.join(' '.join(arguments or []).split())
    return f'{holder}: {command}' if command else holder


@contextlib.contextmanager
def hold(folder, what, lock_file=LOCK_FILE, flag='--snapshot-dir'):
    """Holds `folder` for the duration of the `with` block.

    The folder is created if needed, and removed again on release if it is then empty (a run
    refused before writing anything leaves no folder behind).

    Args:
        folder: the folder to hold (a run's snapshot dir, a converter's output dir).
        what: what the holder does there, for the refusal message, e.g. 'training'.
        lock_file: the lock's file name inside `folder`; several locks may share a folder.
        flag: the flag that chose the folder, named in the refusal's advice.
    Raises:
        FolderInUse: another live process holds it; the message names that process.
    """
    created = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, lock_file)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with os.fdopen(fd) as f:
                holder = _with_command(f.read().strip()) or 'another process'
            raise FolderInUse(f'{folder} is in use: {holder}. Wait for that run to end, or '
                              f'choose another {flag}') from None
        except BaseException:
            os.close(fd)
            raise
        # A holder that was releasing the lock may have removed the file between our open and
        # our flock; then we hold a lock on a file nobody else can see, so try again.
        if os.path.exists(path) and os.path.samestat(os.fstat(fd), os.stat(path)):
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f'{what}, {_holder_description()}\n'.encode())
        yield
    finally:
        os.remove(path)
        os.close(fd)
        if created and not os.listdir(folder):
            os.rmdir(folder)
