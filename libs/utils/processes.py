"""Child processes that end with the process that started them, however it ends, and whether a
process is alive."""
import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent(parent_pid, sig=signal.SIGKILL):
    """Asks the kernel to send `sig` to this process when its parent ends (Linux only).

    Call it in the child: from `subprocess.Popen(preexec_fn=...)` or a worker pool's initializer.
    Unlike a handler in the parent, it also holds when the parent is killed with SIGKILL. The
    parent may have ended before this call; the child then ends at once.

    Args:
        parent_pid: the pid of the parent that started this process (`os.getpid()` there).
        sig: the signal to receive.
    """
    if sys.platform.startswith('linux'):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), 'prctl(PR_SET_PDEATHSIG) failed')
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)


def alive(pid):
    """Whether a process with this pid exists (on this host)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def command_line(pid):
    """The arguments a process on this host runs with (`/proc/<pid>/cmdline`), or None when it
    is gone or cannot be read. A process still inside execve shows an empty list for a moment."""
    try:
        with open(f'/proc/{pid}/cmdline', 'rb') as f:
            return [arg.decode(errors='replace') for arg in f.read().split(b'\0') if arg]
    except OSError:
        return None
