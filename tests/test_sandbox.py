"""The code sandbox: programs run, fail, time out and run out of memory as expected, and escapes don't escape."""

import os
import re
import socket
import time

import pytest

from quantstudy.errors import QuantstudyError
from quantstudy.evaluate import sandbox, sandbox_os
from quantstudy.evaluate.sandbox import run_many, run_python


def alive(pid: int) -> bool:
    """A process exists and is not a zombie (an unreaped corpse is dead for our purposes)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_correct_program_passes_and_failing_assert_fails():
    ok = run_python("def add(a, b):\n    return a + b\nassert add(2, 3) == 5\n")
    assert ok.passed and ok.status == "passed" and ok.returncode == 0
    bad = run_python("assert 1 + 1 == 3, 'arithmetic'\n")
    assert not bad.passed and bad.status == "failed" and bad.returncode == 1
    assert "AssertionError: arithmetic" in bad.detail
    syntax = run_python("def broken(:\n")
    assert syntax.status == "failed" and "SyntaxError" in syntax.detail


def test_stdlib_works_and_writes_inside_the_work_directory_are_allowed():
    program = """
import collections, functools, hashlib, heapq, itertools, json, math, os, pathlib, random, re, string, tempfile
from typing import List, Optional
assert math.gcd(12, 18) == 6 and re.findall(r"\\d+", "a1b22") == ["1", "22"]
assert collections.Counter("aab")["a"] == 2 and collections.namedtuple("P", "x y")(1, 2).y == 2
assert hashlib.md5(b"a").hexdigest() == "0cc175b9c0f1b6a831c399e269772661"
open("out.txt", "w").write("hi")
pathlib.Path("sub").mkdir()
os.rename("out.txt", "sub/out.txt")
assert open("sub/out.txt").read() == "hi" and os.listdir("sub") == ["out.txt"]
with tempfile.NamedTemporaryFile() as f:
    f.write(b"x")
os.remove("sub/out.txt"); os.rmdir("sub")
print("cwd=" + os.getcwd(), file=__import__("sys").stderr)
"""
    result = run_python(program)
    assert result.passed, result.detail
    workdir = re.search(r"cwd=(\S+)", result.detail).group(1)
    assert os.path.basename(workdir).startswith("quantstudy-sandbox-")
    assert not os.path.exists(workdir)              # the throw-away directory is gone


def test_limits_and_environment_are_set(monkeypatch):
    monkeypatch.setenv("QS_SECRET_TOKEN", "hunter2")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    program = """
import os, resource
mb = 1 << 20
assert resource.getrlimit(resource.RLIMIT_AS) == (300 * mb, 300 * mb)
assert resource.getrlimit(resource.RLIMIT_CPU)[0] == 4          # ceil(2.5) + 1
assert resource.getrlimit(resource.RLIMIT_FSIZE)[0] == 16 * mb
assert resource.getrlimit(resource.RLIMIT_CORE) == (0, 0)
assert resource.getrlimit(resource.RLIMIT_NPROC) == (0, 0)
assert set(os.environ) <= {"PATH", "HOME", "TMPDIR", "LANG", "LC_CTYPE", "PWD"}, sorted(os.environ)
assert os.environ["HOME"] == os.environ["TMPDIR"] == os.getcwd() == os.environ.get("PWD", os.getcwd())
"""
    result = run_python(program, timeout_s=2.5, memory_mb=300)
    assert result.passed, result.detail


@pytest.fixture
def outside(tmp_path):
    """Files and folders of 'the user', outside the sandbox."""
    (tmp_path / "keep.txt").write_text("precious")
    (tmp_path / "secret.txt").write_text("TOPSECRET-42")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "inner.txt").write_text("x")
    return tmp_path


ESCAPES = {
    "write": "open({d!r} + '/escaped.txt', 'w').write('x')",
    "os.open": "import os; os.open({d!r} + '/escaped.txt', os.O_WRONLY | os.O_CREAT)",
    "append": "open({d!r} + '/keep.txt', 'a').write('more')",
    "relative": "import os; open('../' * 20 + {d!r}.lstrip('/') + '/escaped.txt', 'w')",
    "remove": "import os; os.remove({d!r} + '/keep.txt')",
    "rmtree": "import shutil; shutil.rmtree({d!r} + '/folder')",
    "rename": "import os; os.rename({d!r} + '/keep.txt', 'stolen.txt')",
    "chmod": "import os; os.chmod({d!r} + '/keep.txt', 0)",
    "symlink": "import os; os.symlink({d!r}, 'link'); open('link/escaped.txt', 'w')",
    "chdir": "import os; os.chdir({d!r}); open('escaped.txt', 'w')",
    "dir_fd": "import os; fd = os.open({d!r}, os.O_RDONLY)\nos.open('escaped.txt', os.O_WRONLY | os.O_CREAT, dir_fd=fd)",
    "read": "import sys; sys.stderr.write(open({d!r} + '/secret.txt').read())",
    "listdir": "import os, sys; sys.stderr.write(str(os.listdir({d!r})))",
    "subprocess": "import subprocess; subprocess.run(['sh', '-c', 'echo x > ' + {d!r} + '/escaped.txt'])",
    "os.system": "import os; os.system('echo x > ' + {d!r} + '/escaped.txt')",
    "swallowed": "try:\n    open({d!r} + '/escaped.txt', 'w')\nexcept BaseException:\n    pass",
    "rebound builtins": "import builtins, os\nbuiltins.issubclass = lambda *a: True\nbuiltins.type = lambda x: str\n"
                        "os.path.normpath = lambda p: '/'\nopen({d!r} + '/escaped.txt', 'w')",
    "str subclass": "class P(str):\n    def startswith(self, *a): return True\nopen(P({d!r} + '/escaped.txt'), 'w')",
    "resource": "import resource; resource.setrlimit(resource.RLIMIT_AS, (-1, -1)); open({d!r} + '/escaped.txt', 'w')",
    "ctypes": "import ctypes; ctypes.CDLL(None).system(b'echo x > ' + {d!r}.encode() + b'/escaped.txt')",
    "gc": "import gc; [o for o in gc.get_objects()]; open({d!r} + '/escaped.txt', 'w')",
}


@pytest.mark.parametrize("attempt", list(ESCAPES), ids=list(ESCAPES))
def test_escapes_are_blocked(attempt, outside):
    def state():
        return {str(p): (p.stat().st_mode, p.is_file() and p.read_bytes()) for p in [outside, *outside.rglob("*")]}

    before = state()
    result = run_python(ESCAPES[attempt].format(d=str(outside)), timeout_s=5)
    assert result.status == "blocked" and result.returncode == sandbox.BLOCKED_EXIT, result.detail
    assert not result.passed
    assert state() == before                        # nothing created, changed, moved or deleted
    assert "TOPSECRET" not in result.detail and "'keep.txt'" not in result.detail   # nothing read or listed


def test_network_is_blocked():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.3)
        port = server.getsockname()[1]
        result = run_python(f"import socket\ns = socket.socket(); s.settimeout(1); s.connect(('127.0.0.1', {port}))")
        assert result.status == "blocked" and "socket" in result.detail
        with pytest.raises(socket.timeout):
            server.accept()                          # nobody ever connected
        # Without the hook, the network namespace (where the system allows one) must stop it too.
        if sandbox_os.isolation(sandbox._INTERPRETER).tool is None:
            pytest.skip("no user+network namespace here; the audit hook is the only network barrier")
        program = f"import socket\ns = socket.socket(); s.settimeout(1)\ntry:\n    s.connect(('127.0.0.1', {port}))\n" \
                  f"except OSError as e:\n    raise SystemExit('refused: ' + str(e))\n"
        result = sandbox._run(program, 5, 256, guard=False)
        assert result.status == "failed" and "refused" in result.detail
        with pytest.raises(socket.timeout):
            server.accept()


def test_fork_bomb_and_subprocess_are_stopped_quickly():
    start = time.monotonic()
    results = run_many(["import os\nwhile True:\n    os.fork()\n",
                        "import subprocess\nsubprocess.Popen(['sleep', '1000'])\n",
                        "import os\nos.posix_spawn('/bin/sleep', ['sleep', '1000'], {})\n"], timeout_s=5)
    assert [r.status for r in results] == ["blocked"] * 3
    assert time.monotonic() - start < 5


def survivors(workdir: str) -> list[int]:
    """Processes still running whose command line names the sandbox's work directory (every
    process of a run has it: the interpreter's boot line carries it, and forks inherit it)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if workdir.encode() in f.read() and alive(int(entry)):
                        found.append(int(entry))
            except OSError:
                pass
    return found


def wait_gone(workdir: str, seconds: float = 3.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while survivors(workdir) and time.monotonic() < deadline:
        time.sleep(0.05)
    return survivors(workdir)


def test_timeout_kills_the_whole_process_group():
    # Without the hook (which would stop the fork) the child survives its parent, unless the group kill works.
    program = """
import os, sys, time
print("cwd=" + os.getcwd(), file=sys.stderr, flush=True)
try:
    pid = os.fork()
except OSError:                       # RLIMIT_NPROC held (not root): nothing to kill then
    pid = -1
if pid == 0:
    time.sleep(1000)
    os._exit(0)
print(f"child={pid}", file=sys.stderr, flush=True)
time.sleep(1000)
"""
    start = time.monotonic()
    result = sandbox._run(program, 1.0, 256, guard=False)
    assert result.status == "timeout" and not result.passed
    assert time.monotonic() - start < 3.0
    if int(re.search(r"child=(-?\d+)", result.detail).group(1)) == -1:
        pytest.skip("fork refused by RLIMIT_NPROC, so there was no child to kill")
    assert wait_gone(re.search(r"cwd=(\S+)", result.detail).group(1)) == []


def test_sleeping_and_spinning_programs_time_out():
    start = time.monotonic()
    results = run_many(["import time\ntime.sleep(1000)\n", "while True:\n    pass\n"], timeout_s=1.0, workers=2)
    assert [r.status for r in results] == ["timeout", "timeout"]
    assert all(r.seconds < 3.0 for r in results) and time.monotonic() - start < 3.5


def test_memory_limit():
    result = run_python("x = bytearray(4 << 30)\n", memory_mb=512)
    assert result.status == "memory" and not result.passed and "MemoryError" in result.detail
    assert run_python("x = bytearray(64 << 20)\n", memory_mb=512).passed     # well under the limit is fine


def test_run_many_keeps_order_and_checks_arguments():
    programs = ["pass", "raise SystemExit(3)", "open('/etc/hostname-x', 'w')", "pass"]
    assert [r.status for r in run_many(programs, workers=3)] == ["passed", "failed", "blocked", "passed"]
    assert run_many([]) == []
    with pytest.raises(QuantstudyError):
        run_python("pass", timeout_s=0)
    with pytest.raises(QuantstudyError):
        run_python("pass", memory_mb=-1)
    with pytest.raises(QuantstudyError):
        run_many(["pass"], workers=0)


@pytest.mark.skipif(os.geteuid() != 0 or not os.access("/usr/bin/python3", os.X_OK),
                    reason="needs root and a system python that nobody can run")
def test_root_drops_to_nobody_where_it_can(monkeypatch, tmp_path):
    """As root with an interpreter nobody can run, the OS layers hold even without the hook."""
    sandbox_os.isolation.cache_clear()
    monkeypatch.setattr(sandbox, "_INTERPRETER", os.path.realpath("/usr/bin/python3"))
    try:
        if sandbox_os.isolation(sandbox._INTERPRETER).user is None:
            pytest.skip("nobody cannot run the system python here")
        program = f"""
import os, sys
forks = 0
for _ in range(5):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        os._exit(0)
    forks += 1
print(f"forks={{forks}}", file=sys.stderr, flush=True)
open({str(tmp_path / 'escaped.txt')!r}, 'w')
"""
        result = sandbox._run(program, 5, 256, guard=False)
    finally:
        sandbox_os.isolation.cache_clear()
    assert "forks=0" in result.detail                    # RLIMIT_NPROC applies to nobody
    # PermissionError as nobody; FileNotFoundError where bubblewrap hides the folder altogether
    assert result.status == "failed" and re.search("PermissionError|FileNotFoundError", result.detail)
    assert not (tmp_path / "escaped.txt").exists()
