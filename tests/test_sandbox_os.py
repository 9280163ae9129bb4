"""The sandbox's OS layer alone (no audit hook): as root, escapes still fail.

These run the program with `guard=False`, so only what the kernel enforces stands between it
and the machine: bubblewrap's namespaces and read-only root, the resource limits, the
wall-clock kill. Where bubblewrap is missing they skip -- unless QUANTSTUDY_REQUIRE_SANDBOX=1
(CI sets it: CI runs as root, and `make install` installs bubblewrap there), then they fail.
"""

import os
import re
import socket
import time

import pytest

from quantstudy.evaluate import sandbox, sandbox_os
from test_sandbox import wait_gone


@pytest.fixture(scope="module")
def bubblewrap():
    iso = sandbox_os.isolation(sandbox._INTERPRETER)
    if iso.tool != "bwrap":
        if os.environ.get("QUANTSTUDY_REQUIRE_SANDBOX") == "1":
            pytest.fail("bubblewrap is required here (QUANTSTUDY_REQUIRE_SANDBOX=1) but cannot run "
                        f"the interpreter: isolation is {iso.tool or 'none'}")
        pytest.skip("no bubblewrap here: the OS layer is unshare -rn at most")
    return iso


@pytest.fixture
def user_files(tmp_path):
    (tmp_path / "secret.txt").write_text("TOPSECRET-42")
    (tmp_path / "keep.txt").write_text("precious")
    return tmp_path


def snapshot(folder):
    return {str(p): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def run_bare(program: str, timeout_s: float = 5, memory_mb: int = 512):
    return sandbox._run(program, timeout_s, memory_mb, guard=False)


def test_writes_outside_the_work_directory_fail_even_as_root(bubblewrap, user_files):
    before = snapshot(user_files)
    targets = [str(user_files / "keep.txt"), str(user_files / "new.txt"), "/tmp/quantstudy-escaped.txt",
               "/usr/quantstudy-escaped.txt", "/etc/quantstudy-escaped.txt", "/quantstudy-escaped.txt",
               os.path.join(sandbox_os.interpreter_prefix(sandbox._INTERPRETER), "escaped.txt")]
    program = f"""
import os, sys
wrote = []
for path in {targets!r}:
    try:
        with open(path, "a") as f:
            f.write("x")
        wrote.append(path)
    except OSError:
        pass
try:
    os.mkdir("/usr/quantstudy-dir")
    wrote.append("mkdir")
except OSError:
    pass
print("uid=%d wrote=%r" % (os.getuid(), wrote), file=sys.stderr)
open("inside.txt", "w").write("fine")          # the work directory stays writable
"""
    result = run_bare(program)
    assert result.passed, result.detail
    assert "wrote=[]" in result.detail
    assert snapshot(user_files) == before
    assert not any(os.path.exists(path) for path in targets[2:])


def test_the_users_files_cannot_be_read_or_listed(bubblewrap, user_files):
    program = f"""
import os, sys
seen = []
for path in [{str(user_files / 'secret.txt')!r}, "/etc/shadow", "/etc/passwd", "/root/.bash_history"]:
    try:
        seen.append(open(path).read()[:40])
    except OSError:
        pass
for folder in [{str(user_files)!r}, "/root", "/home", "/work", "/tmp"]:
    try:
        seen.extend(os.listdir(folder))
    except OSError:
        pass
print("cwd=" + os.getcwd(), file=sys.stderr)
print("seen=%r" % (seen,), file=sys.stderr)
"""
    result = run_bare(program)
    assert result.passed, result.detail
    seen = re.search(r"seen=(.*)", result.detail).group(1)
    assert "TOPSECRET" not in seen and "root:" not in seen
    # What can be listed at all: the folders on the way to the interpreter and the work directory.
    workdir = re.search(r"cwd=(\S+)", result.detail).group(1)
    allowed = {part for path in (sandbox_os.interpreter_prefix(sandbox._INTERPRETER), workdir)
               for part in path.split("/") if part}
    assert set(re.findall(r"'([^']*)'", seen)) <= allowed, seen


def test_no_network_even_to_the_hosts_loopback(bubblewrap):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.3)
        port = server.getsockname()[1]
        program = f"""
import socket, sys
for host in ("127.0.0.1", "10.0.0.1", "8.8.8.8"):
    s = socket.socket()
    s.settimeout(1)
    try:
        s.connect((host, {port}))
        print("connected " + host, file=sys.stderr)
    except OSError as e:
        print("refused %s: %s" % (host, e), file=sys.stderr)
print("interfaces=%r" % (socket.if_nameindex(),), file=sys.stderr)
"""
        result = run_bare(program)
        assert result.passed, result.detail
        lines = result.detail.splitlines()
        assert not any(line.startswith("connected") for line in lines)
        assert sum(line.startswith("refused ") for line in lines) == 3
        assert re.search(r"interfaces=\[\(1, 'lo'\)\]", result.detail)    # loopback only, and it is its own
        with pytest.raises(socket.timeout):
            server.accept()


def test_spawned_and_daemonised_processes_die_with_the_sandbox(bubblewrap):
    program = """
import os, subprocess, sys, time
print("cwd=" + os.getcwd(), file=sys.stderr, flush=True)
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"], start_new_session=True)
if os.fork() == 0:                      # the classic double fork, away from the parent and its group
    os.setsid()
    if os.fork() == 0:
        time.sleep(1000)
    os._exit(0)
time.sleep(0.3)
"""
    result = run_bare(program)
    assert result.passed, result.detail
    assert wait_gone(re.search(r"cwd=(\S+)", result.detail).group(1)) == []


def test_a_fork_bomb_is_held_and_ends_with_the_sandbox(bubblewrap):
    # Bounded (2^9 processes) so the test machine is never at risk; the property is that none
    # of them escapes the sandbox's end, whether forks were refused (as nobody) or not (as root).
    program = """
import os, sys, time
print("cwd=" + os.getcwd(), file=sys.stderr, flush=True)
for _ in range(9):
    try:
        os.fork()
    except OSError:
        break
time.sleep(1000)
"""
    start = time.monotonic()
    result = run_bare(program, timeout_s=2)
    assert result.status == "timeout" and time.monotonic() - start < 5
    assert wait_gone(re.search(r"cwd=(\S+)", result.detail).group(1), seconds=5) == []


def test_memory_is_capped(bubblewrap):
    result = run_bare("x = bytearray(2 << 30)\n", memory_mb=256)
    assert result.status == "memory" and "MemoryError" in result.detail


def test_nothing_can_be_remounted_or_escalated(bubblewrap):
    program = """
import os, sys
caps = [line for line in open("/proc/self/status") if line.startswith("CapEff")][0].split()[1]
print("caps=" + caps, file=sys.stderr)
import subprocess
for args in (["mount", "-o", "remount,bind,rw", "/usr"], ["mount", "-o", "remount,rw", "/"],
             ["mount", "-t", "tmpfs", "none", "/usr"]):
    r = subprocess.run(args, capture_output=True)
    print("rc=%d" % r.returncode, file=sys.stderr)
try:
    open("/usr/quantstudy-escaped.txt", "w")
    print("wrote", file=sys.stderr)
except OSError:
    pass
"""
    result = run_bare(program)
    assert result.passed, result.detail
    assert "caps=0000000000000000" in result.detail and "rc=0" not in result.detail
    assert "wrote" not in result.detail and not os.path.exists("/usr/quantstudy-escaped.txt")
