"""A process group that must not outlive the process that started it, however that one dies.

A vLLM server runs in its own session (so Ctrl-C in a terminal reaches us, not it, and so
`stop` can signal the whole group). When we are SIGKILLed, neither `__exit__` nor atexit
runs; PR_SET_PDEATHSIG ends the API server, but vLLM's EngineCore (its child, in the same
group) was seen to live on, orphaned, holding its memory (1.7 GB each on a CPU).

The reaper is a tiny watchdog process, started next to the group: it blocks reading a pipe
whose only write end we hold. The kernel closes that end when we die, by any signal; the read
returns, and the watchdog SIGTERMs the group, then SIGKILLs it after the grace period. On a
normal stop we end the watchdog first (the group is already gone by then).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

# Runs in a bare interpreter (-S -E: no site, no environment): ~20 ms to start, no imports of ours.
_WATCHDOG = """
import os, signal, sys, time
fd, pgid, grace = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
signal.signal(signal.SIGINT, signal.SIG_IGN)
try:
    while os.read(fd, 1):
        pass
except OSError:
    pass
def alive():
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False
if alive():
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
"""


class GroupReaper:
    """Kills process group `pgid` when this process dies; `cancel()` on a normal stop."""

    def __init__(self, pgid: int, grace_s: float = 10.0):
        read_end, self._write_end = os.pipe()   # not inheritable: no other child holds our end open
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-S", "-E", "-c", _WATCHDOG, str(read_end), str(pgid), str(grace_s)],
                pass_fds=(read_end,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True)
        finally:
            os.close(read_end)

    def cancel(self) -> None:
        """The group was stopped on purpose: end the watchdog without letting it signal."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        os.close(self._write_end)
        self.proc = None


def die_with_parent():
    """A preexec hook: SIGTERM the server when our process dies, however it dies.

    atexit and __exit__ do not run when we are SIGKILLed (or SIGTERMed without a
    handler, e.g. a CI timeout); the server, in its own session, would outlive us. Linux's
    PR_SET_PDEATHSIG closes that hole for the API server itself; its EngineCore child was seen
    to outlive it, which `GroupReaper` covers. Elsewhere: None (atexit remains the net)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)  # resolved here, not in the forked child
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
        if os.getppid() != parent:  # the parent died before the prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
    return hook
