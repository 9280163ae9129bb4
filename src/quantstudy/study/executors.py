"""Where independent jobs run: in this process, in order (`local`), or as Ray tasks (`ray`).

Only the jobs that need nothing from each other go through an executor: quantizing each
variant, and benchmarking each model. Both executors call the same job functions with the
same specs and hand every result back to the driver, which alone writes the store; so a
study gives the same results either way, and a worker dying takes no store write with it.

Ray tasks ask for one CPU each (quantization is one process of torch work) and, for the
bench, one GPU where the cluster has GPUs. On a cluster without GPUs the bench tasks run
one at a time: two vLLM servers sharing a machine's cores would measure each other.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from quantstudy.errors import QuantstudyError

# (job id, function, args) -> the executor calls function(*args)
Task = tuple[str, Callable[..., Any], tuple]
# on_done(job id, result or None, error message or None, seconds the job itself ran)
Done = Callable[[str, Any, "str | None", float], None]


def timed_call(fn, *args):
    """(fn(*args), seconds): timed where it runs, so queueing on a busy cluster is not counted."""
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


class LocalExecutor:
    name = "local"

    def run(self, tasks: Iterable[Task], on_done: Done, kind: str = "cpu") -> None:
        for job_id, fn, args in tasks:
            start = time.perf_counter()
            try:
                result = fn(*args)
            except QuantstudyError as exc:
                on_done(job_id, None, str(exc), time.perf_counter() - start)
            else:
                on_done(job_id, result, None, time.perf_counter() - start)

    def close(self) -> None:
        pass


def _one_line(exc: BaseException) -> str:
    """A Ray task error as the one line of the QuantstudyError inside it (else its last line)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, QuantstudyError):
        return str(cause)
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None):
        try:
            import ray
        except ImportError:
            raise QuantstudyError("the ray executor needs Ray: pip install ray==2.60.0") from None
        self.ray = ray
        # The driver's offline settings must reach workers a local cluster spawns (a worker
        # reaching for the hub would hang on a machine without network).
        env = {k: v for k, v in os.environ.items() if k.startswith(("HF_", "QUANTSTUDY_", "TRANSFORMERS_", "OMP_WAIT"))}
        try:
            if not ray.is_initialized():
                ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                         runtime_env={"env_vars": env} if env else None)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            where = address or "a new local cluster"
            raise QuantstudyError(f"cannot start Ray at {where}: {str(exc).strip().splitlines()[0]}") from None
        self.gpus = int(ray.cluster_resources().get("GPU", 0))
        self._remote = ray.remote(timed_call)

    def run(self, tasks: Iterable[Task], on_done: Done, kind: str = "cpu") -> None:
        """Submit tasks and report each as it finishes. `kind='bench'`: one GPU per task, or one
        task at a time on a cluster without GPUs."""
        ray = self.ray
        options = {"num_cpus": 1, "max_retries": 0}
        limit = None
        if kind == "bench":
            if self.gpus:
                options["num_gpus"] = 1
            else:
                limit = 1
        queue = list(tasks)
        running: dict = {}
        while queue or running:
            while queue and (limit is None or len(running) < limit):
                job_id, fn, args = queue.pop(0)
                running[self._remote.options(**options).remote(fn, *args)] = (job_id, time.perf_counter())
            ready, _ = ray.wait(list(running), num_returns=1)
            job_id, submitted = running.pop(ready[0])
            try:
                result, seconds = ray.get(ready[0])
            except ray.exceptions.RayTaskError as exc:
                on_done(job_id, None, _one_line(exc), time.perf_counter() - submitted)
            except ray.exceptions.RayError as exc:   # worker died (OOM, killed): say so, keep going
                on_done(job_id, None, f"Ray task failed: {_one_line(exc)}", time.perf_counter() - submitted)
            else:
                on_done(job_id, result, None, seconds)

    def close(self) -> None:
        # Disconnects; a local cluster this process started stops with it, an attached one runs on.
        if self.ray.is_initialized():
            self.ray.shutdown()


def make_executor(name: str, address: str | None = None):
    if name == "local":
        if address:
            raise QuantstudyError("--address applies to the ray executor only")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address)
    raise QuantstudyError(f"unknown executor {name!r}; choose local or ray")
