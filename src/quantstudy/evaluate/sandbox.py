"""Run one untrusted Python program (model-written code) in a throw-away child process.

Layers, outermost first, and what each one guarantees:

* **Process**: a fresh interpreter per program (`python -I -S -B`: no user site, no
  site-packages, no PYTHON* variables, no .pyc writes), in its own session and process group,
  with stdin/stdout on /dev/null and a minimal environment (PATH, HOME, TMPDIR, LANG only; no
  proxies, no tokens). Its working directory, HOME and TMPDIR are a new temporary directory
  that is deleted afterwards.
* **Wall clock**: after `timeout_s` the whole process group gets SIGKILL; the group is killed
  after a normal exit too, so nothing left in the group outlives the call.
* **Resource limits**, set in the child before the program's first line: RLIMIT_AS
  (`memory_mb`), RLIMIT_CPU (timeout + 1 s), RLIMIT_FSIZE (16 MiB per file), RLIMIT_CORE 0,
  RLIMIT_NPROC 0. They are set after exec, not in a `preexec_fn`, because `run_many` forks from
  threads, where `preexec_fn` can deadlock. The kernel exempts root from RLIMIT_NPROC.
* **OS isolation where the system allows it** (`sandbox_os`, probed once, silently skipped
  otherwise): bubblewrap's user, mount, pid and network namespaces -- a read-only root holding
  only /usr, the interpreter and the work directory, so writes elsewhere fail even as root,
  the user's files are not there, there is no network and no process outlives the sandbox --
  else `unshare -rn` (no network only); and, as root, `nobody` where `nobody` can run the
  interpreter.
* **Audit hook** (always, `sys.addaudithook`, which the program cannot remove): the first
  forbidden operation prints `quantstudy-sandbox: blocked ...` and ends the process with
  status 86 (`os._exit`, so `except BaseException` cannot swallow it). Forbidden: sockets and
  network clients; subprocess, os.system, exec*, fork, posix_spawn; signals to other
  processes; ctypes; raising rlimits; gc/thread-frame introspection (the hook's own state);
  symlinks and hard links; chdir anywhere but the work directory; any write, create, delete,
  rename, chmod, chown, utime, truncate or xattr change outside the work directory (except
  writing /dev/null); any open or listing outside the work directory, the stdlib and a few
  system files (/dev/null, /dev/urandom, timezone data), so Python code cannot read the
  user's files;
  opening any directory outside the work directory (no `dir_fd` tricks). Paths are resolved
  lexically against the pinned working directory; the program cannot create symlinks, so
  lexical resolution inside the work directory is exact.

Not guaranteed: the hook is an in-process guard, not a security boundary against an author
who attacks the interpreter itself (a CPython memory-corruption bug, or loading native code
such as an extension module it wrote) -- then only the OS layers remain: with bubblewrap they
still keep files and network out of reach; with `unshare -rn` alone, while we stay root, they
do not protect files (a user namespace mapped to root keeps root's file access). `os.stat`, `os.mknod`/`mkfifo` and reads done
inside C libraries (OpenSSL, libc) are not audited. The hook allows threads (3.11 has no audit
event for them); RLIMIT_NPROC 0 refuses them wherever it applies (not root). Without a
network namespace, blocking the network rests on the hook alone. Linux only (/proc, waitid).
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from quantstudy.errors import QuantstudyError
from quantstudy.evaluate import sandbox_os

STATUSES = ("passed", "failed", "timeout", "memory", "blocked", "killed")
BLOCKED_EXIT = 86                     # the hook's exit status; with the marker it means "blocked"
_MARK = "quantstudy-sandbox: blocked"
_FILE_LIMIT = 16 << 20                # RLIMIT_FSIZE: room for real output, not for filling a disk
_DETAIL_CHARS = 1000
_SYSTEM_READS = ("/dev/null", "/dev/urandom", "/dev/zero", "/etc/localtime", "/usr/share/zoneinfo")
_INTERPRETER = sys.executable         # module-level so a test can point it at another python


@dataclass(frozen=True)
class SandboxResult:
    """How one program ended. `detail` is the tail of its stderr (a traceback, or why it was blocked)."""

    status: str            # one of STATUSES
    returncode: int | None
    detail: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_python(program: str, timeout_s: float = 10.0, memory_mb: int = 1024) -> SandboxResult:
    """Run `program` as a script in the sandbox; it passes when it exits with status 0 in time."""
    return _run(program, timeout_s, memory_mb, guard=True)


def run_many(programs: Iterable[str], timeout_s: float = 10.0, memory_mb: int = 1024,
             workers: int = 2) -> list[SandboxResult]:
    """`run_python` over many programs, `workers` at a time; results in the programs' order."""
    programs = list(programs)
    _check(timeout_s, memory_mb)
    if workers < 1:
        raise QuantstudyError(f"sandbox workers must be at least 1, got {workers}")
    if not programs:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(programs))) as pool:
        return list(pool.map(lambda p: run_python(p, timeout_s, memory_mb), programs))


def _check(timeout_s: float, memory_mb: int) -> None:
    if not timeout_s > 0:
        raise QuantstudyError(f"sandbox timeout must be positive, got {timeout_s}")
    if not memory_mb > 0:
        raise QuantstudyError(f"sandbox memory limit must be positive, got {memory_mb} MB")


def _run(program: str, timeout_s: float, memory_mb: int, *, guard: bool) -> SandboxResult:
    """The sandbox; `guard=False` leaves out the audit hook so tests can check the OS layers alone."""
    _check(timeout_s, memory_mb)
    iso = sandbox_os.isolation(_INTERPRETER)
    interpreter = os.path.realpath(_INTERPRETER)     # a venv's link would not exist inside bubblewrap
    cpu = math.ceil(timeout_s) + 1
    limits = (("RLIMIT_AS", memory_mb << 20, memory_mb << 20), ("RLIMIT_CPU", cpu, cpu + 1),
              ("RLIMIT_FSIZE", _FILE_LIMIT, _FILE_LIMIT), ("RLIMIT_CORE", 0, 0), ("RLIMIT_NPROC", 0, 0))
    with tempfile.TemporaryDirectory(prefix="quantstudy-sandbox-") as tmp, tempfile.TemporaryFile() as err:
        root = os.path.realpath(tmp)      # the hook compares lexically, so no symlink in the root
        path = os.path.join(root, "program.py")
        with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(program)
        if iso.user:
            os.chown(root, *iso.user)
        boot = f"{_guest_source()}\nexec(globals().pop('_guest_setup')({root!r}, {path!r}, {limits!r}, {guard!r}, " \
               f"{BLOCKED_EXIT!r}, {_SYSTEM_READS!r}), globals())\n"
        cmd = iso.wrap([interpreter, "-I", "-S", "-B", "-c", boot], interpreter, root)
        start = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=root, env=sandbox_os.environment(root), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                                **sandbox_os.popen_user(iso.user))
        timed_out = _wait_and_kill(proc, start + timeout_s)
        seconds = time.monotonic() - start
        err.seek(max(0, err.seek(0, os.SEEK_END) - 4 * _DETAIL_CHARS))
        tail = err.read().decode("utf-8", "replace")[-_DETAIL_CHARS:].strip()
    code = iso.returncode(proc.returncode)
    return SandboxResult(_status(code, timed_out, tail), code, tail, seconds)


def _wait_and_kill(proc: subprocess.Popen, deadline: float) -> bool:
    """Wait for the child until `deadline`, then SIGKILL its process group; True if it ran out of time.

    The child is waited for without being reaped (WNOWAIT), so its pid -- which is also the
    group id -- cannot be reused by an unrelated process before the group kill.
    """
    delay, timed_out = 0.001, False
    try:
        while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.02)
    finally:                                  # also on KeyboardInterrupt: never leave the group running
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
    return timed_out


def _status(returncode: int, timed_out: bool, tail: str) -> str:
    if timed_out or returncode == -signal.SIGXCPU:
        return "timeout"
    if returncode == 0:
        return "passed"
    if returncode == BLOCKED_EXIT and _MARK in tail:
        return "blocked"
    if "MemoryError" in tail:
        return "memory"
    return "killed" if returncode < 0 else "failed"


@functools.lru_cache(maxsize=None)
def _guest_source() -> str:
    return textwrap.dedent(inspect.getsource(_guest_setup))


def _guest_setup(root, program_path, limits, guard, blocked_exit, system_reads):
    """Runs inside the child, shipped as source through `-c`: limits, then the hook; returns the program's code.

    The program then runs in __main__'s globals, which it shares with this function, and it may
    rebind any builtin. So the hook looks up no global or builtin name: everything it uses is
    bound here and reached through its closure, and that closure holds only immutable values and
    builtin functions (a signal handler that catches the hook's frame finds nothing to mutate).
    The hook calls no helper function for the same reason, hence its single long body.
    """
    import os
    import resource
    import sys

    for name, soft, hard in limits:
        which = getattr(resource, name)
        cap = resource.getrlimit(which)[1]
        if cap != resource.RLIM_INFINITY:         # an unprivileged process cannot raise a hard limit
            soft, hard = min(soft, cap), min(hard, cap)
        resource.setrlimit(which, (soft, hard))
    with open(program_path, "rb") as source:
        code = compile(source.read(), program_path, "exec")
    if not guard:
        return code

    type_, str_, bytes_, int_, issub, base = type, str, bytes, int, issubclass, BaseException
    as_str, decode, as_int = str.__str__, bytes.decode, int.__index__   # exact copies of subclass values
    stat, readlink, write, exit_, me = os.stat, os.readlink, os.write, os._exit, os.getpid()
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    prefix = root + "/"
    reads = frozenset(os.path.normpath(p) for p in tuple(sys.path) + tuple(system_reads) if p)
    read_dirs = tuple(p + "/" for p in reads)
    deny = frozenset({"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.fork", "os.forkpty",
                      "os.killpg", "os.symlink", "os.link", "resource.setrlimit", "resource.prlimit",
                      "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._current_frames",
                      "sys._current_exceptions", "webbrowser.open"})
    deny_prefixes = ("socket.", "ctypes.", "http.client.", "urllib.", "ftplib.", "smtplib.", "poplib.",
                     "imaplib.", "nntplib.", "telnetlib.")
    writes = frozenset({"os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.utime", "os.truncate",
                        "os.setxattr", "os.removexattr", "shutil.rmtree"})
    listings = frozenset({"os.listdir", "os.scandir", "os.listxattr", "os.getxattr"})
    mark = b"quantstudy-sandbox: blocked "

    def hook(event, args):
        verdict = None
        try:
            if event == "open":
                path, mode, flags = args
                if issub(type_(path), int_):
                    return                          # wraps an fd that was itself opened through this check
                writing = type_(flags) is not int_ or flags & write_flags != 0 or (
                    mode is not None and (type_(mode) is not str_ or "w" in mode or "a" in mode
                                          or "x" in mode or "+" in mode))
                todo = ((path, "w" if writing else "r"),)
            elif event in writes:
                todo = ((args[0], "w"),)
            elif event == "os.rename":
                todo = ((args[0], "w"), (args[1], "w"))
            elif event in listings:
                todo = ((args[0], "r"),)
            elif event == "os.chdir":
                todo = ((args[0], "cd"),)
            elif event == "os.kill":
                todo = ()
                if not (type_(args[0]) is int_ and args[0] == me):
                    verdict = event
            elif event in deny or event.startswith(deny_prefixes):
                todo, verdict = (), event
            else:
                return
            for path, need in todo:
                kind = type_(path)
                if path is None:
                    text = "."                      # os.listdir() / os.scandir() default
                elif issub(kind, int_):             # fchmod, fchdir, listdir(fd): what the fd points at
                    text = readlink("/proc/self/fd/%d" % as_int(path))
                elif issub(kind, str_):
                    text = as_str(path)
                elif issub(kind, bytes_):
                    text = decode(path, "utf-8", "surrogateescape")
                else:
                    verdict = event
                    break
                if not text.startswith("/"):
                    text = prefix + text            # chdir is pinned to the root, so cwd == root
                parts = ()
                for part in text.split("/"):
                    if part == "..":
                        parts = parts[:-1]
                    elif part and part != ".":
                        parts = parts + (part,)
                norm = "/" + "/".join(parts)
                inside = norm == root or norm.startswith(prefix)
                if need == "cd":
                    ok = norm == root
                elif need == "w" or inside:
                    ok = inside or norm == "/dev/null"
                else:
                    ok = norm in reads or norm.startswith(read_dirs)
                    if ok and event == "open":      # a directory fd outside would let dir_fd escape
                        try:
                            ok = stat(text).st_mode & 0o170000 != 0o040000
                        except OSError:
                            pass
                if not ok:
                    verdict = event + " " + norm
                    break
        except base:
            verdict = event if type_(event) is str_ else "?"
        if verdict is not None:
            write(2, mark + verdict.encode("utf-8", "replace") + b"\n")
            exit_(blocked_exit)

    sys.addaudithook(hook)
    return code
