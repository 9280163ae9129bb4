"""The sandbox's OS layer: which isolation this system allows, and the command that applies it.

Strongest first, each probed once with a real run of the interpreter and silently skipped
where the system refuses it:

* **bubblewrap** (`bwrap`, Debian's `bubblewrap`; `make install` adds it where it can): new
  user, mount, pid, network, IPC and UTS namespaces. The program sees a read-only root that
  holds only /usr, the interpreter's own prefix, a minimal /dev, its own /proc and its work
  directory -- the one writable place. The user's files are not there to read, writes
  anywhere else fail with EROFS even for root (all capabilities dropped, so nothing can be
  remounted), there is no network interface but a downed loopback, and every process it
  starts dies with the sandbox (it is pid 1's descendant in a pid namespace that ends when
  bwrap is killed).
* **unshare -rn**: user and network namespaces only (no network; files as the caller sees them).
* **nobody**: as root, the program runs as `nobody` when `nobody` can run the interpreter
  (then RLIMIT_NPROC holds and the OS keeps it out of root's files). Combined with either of
  the above.

What stays true as root without `nobody` (an interpreter under /root, as with pyenv): the
kernel exempts uid 0 from RLIMIT_NPROC, so a fork bomb is held by the pid namespace (and the
audit hook), not refused; it ends with the sandbox's wall clock.
"""

from __future__ import annotations

import functools
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass

_SEARCH = "/usr/bin:/bin:/usr/sbin:/sbin"
# Top-level names a Debian (merged-/usr or not) system needs for an interpreter to start.
_SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_SYSTEM_FILES = ("/etc/localtime", "/etc/ld.so.cache")


@dataclass(frozen=True)
class Isolation:
    """What the OS offers the sandbox here."""

    user: tuple[int, int] | None      # (uid, gid) to drop to (root only), or None
    tool: str | None                  # 'bwrap' | 'unshare' | None
    binary: str | None                # the tool's path

    def wrap(self, cmd: list[str], interpreter: str, workdir: str) -> list[str]:
        """`cmd` (which starts with `interpreter`) inside this isolation, working in `workdir`."""
        if self.tool == "bwrap":
            return [self.binary, *_bwrap_args(interpreter, workdir), *cmd]
        if self.tool == "unshare":
            return [self.binary, "-rn", "--", *cmd]
        return cmd

    def returncode(self, code: int) -> int:
        """The program's own status: bwrap reports a child killed by signal N as 128 + N."""
        if self.tool == "bwrap" and code > 128:
            return -(code - 128)
        return code


def popen_user(user: tuple[int, int] | None) -> dict:
    # Popen's own setuid/setgid (done in C between fork and exec) is thread-safe, unlike preexec_fn.
    return {} if user is None else {"user": user[0], "group": user[1], "extra_groups": []}


def environment(root: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": root, "TMPDIR": root, "LANG": "C.UTF-8"}


def interpreter_prefix(interpreter: str) -> str:
    """The folder the interpreter's stdlib lives under (bound read-only into the sandbox)."""
    real = os.path.realpath(interpreter)
    base = os.path.realpath(sys.base_prefix)
    if real.startswith(base + "/"):
        return base
    return os.path.dirname(os.path.dirname(real))        # <prefix>/bin/python3.x


def _bwrap_args(interpreter: str, workdir: str) -> list[str]:
    args = ["--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--ro-bind", "/usr", "/usr"]
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in _SYSTEM_FILES:
        args += ["--ro-bind-try", path, path]
    prefix = interpreter_prefix(interpreter)
    if prefix != "/usr" and not prefix.startswith("/usr/"):
        args += ["--ro-bind", prefix, prefix]
    # The work directory at its own path (the audit hook compares paths); then the root goes read-only.
    args += ["--bind", workdir, workdir, "--dev", "/dev", "--proc", "/proc", "--remount-ro", "/",
             "--chdir", workdir]
    return args


@functools.lru_cache(maxsize=None)
def isolation(interpreter: str) -> Isolation:
    """The strongest isolation that runs `interpreter` here; probed once per interpreter."""
    interpreter = os.path.realpath(interpreter)
    user = None
    if os.geteuid() == 0:
        try:
            entry = pwd.getpwnam("nobody")
            nobody = (entry.pw_uid, entry.pw_gid)
        except KeyError:
            nobody = (65534, 65534)
        # The interpreter may live where nobody cannot reach it (pyenv under /root): then stay root.
        if _probe([interpreter, "-I", "-S", "-B", "-c", "import math, re, collections"], nobody):
            user = nobody
    probe = [interpreter, "-I", "-S", "-B", "-c", "import os, resource; os.stat('/proc/self/fd')"]
    for tool in ("bwrap", "unshare"):
        binary = shutil.which(tool, path=_SEARCH)
        if binary is None:
            continue
        candidate = Isolation(user, tool, binary)
        workdir = os.path.realpath(os.environ.get("TMPDIR") or "/tmp")
        if _probe(candidate.wrap(probe, interpreter, workdir), user):
            return candidate
    return Isolation(user, None, None)


def _probe(cmd: list[str], user: tuple[int, int] | None) -> bool:
    try:
        return subprocess.run(cmd, cwd="/", env=environment("/"), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30,
                              **popen_user(user)).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
