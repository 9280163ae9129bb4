"""Run a study: config -> jobs -> store -> results dict -> recommendation and report.

Resumability rests on three rules. (1) A job is finished exactly when its result is in the
store (one SQLite transaction, so a kill leaves it there or not at all); before running a
job the driver asks the store, and for a quantize job also checks the checkpoint folder's
fingerprint against the recorded one. (2) Stages cache their own partial work in the same
store (evaluate per item, compare per generation), so a job killed half-way resumes inside
the stage. (3) The results dict is assembled only from stored results, the bench's timings
included, so a rerun after any kill prints the same report as a run never interrupted.

A failing job (QuantstudyError: vLLM will not start, a recipe that does not apply) is
printed as one line and recorded under `failures`; the other jobs go on, the report says
which section failed, and the command exits non-zero. Failures are not stored: a rerun
tries again.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from quantstudy.errors import QuantstudyError
from quantstudy.results import StudyResults
from quantstudy.store import ResultStore, content_key, provenance
from quantstudy.study import jobs as J
from quantstudy.study.config import StudyConfig
from quantstudy.study.executors import make_executor
from quantstudy.study.lock import StudyLock

STORE = "study.sqlite"
LOG = "jobs.log"
RESULTS_KIND = "study:results"


@dataclass
class StudyOutcome:
    results: StudyResults
    report_dir: Path
    failures: list[dict] = field(default_factory=list)


class _Runner:
    def __init__(self, cfg: StudyConfig, out: Path, executor, progress: Progress):
        self.cfg, self.out, self.executor, self.progress = cfg, out, executor, progress
        self.store = ResultStore(out / STORE)
        self.failures: list[dict] = []
        self.overall = progress.add_task("study", total=None)

    # -- bookkeeping ----------------------------------------------------------------------------
    def log(self, event: str, job: J.Job, **extra) -> None:
        """One JSON line per job event: what ran, what was reused, what failed (and the tests count it)."""
        line = json.dumps({"event": event, "job": job.label, "key": job.key, "pid": os.getpid(),
                           "t": round(time.time(), 3), **extra})
        with open(self.out / LOG, "a") as fh:
            fh.write(line + "\n")

    def say(self, text: str) -> None:
        self.progress.console.print(text, highlight=False, soft_wrap=True)

    def cached(self, job: J.Job) -> dict | None:
        rec = self.store.get(job.key)
        if rec is not None:
            self.log("skip", job)
            self.say(f"[dim]· {job.label}: done earlier[/]")
            self.progress.advance(self.overall)
        return rec

    def finish(self, job: J.Job, result: dict | None, error: str | None, seconds: float, **prov) -> dict | None:
        self.progress.advance(self.overall)
        if error is not None:
            self.failures.append({"stage": job.kind, "name": job.name, "error": error})
            self.log("fail", job, error=error)
            self.say(f"[bold red]✗ {job.label}:[/] {error}")
            return None
        seconds = round(seconds, 2)
        self.store.put(job.key, f"study:{job.kind}", job.inputs, result, provenance(seconds=seconds, **prov))
        self.log("done", job, seconds=seconds)
        self.say(f"[green]✓[/] {job.label} ({seconds:.0f} s)")
        # What the store holds (through JSON: tuples become lists, numpy scalars plain numbers),
        # not the object in hand, so a first run and a resumed one assemble the same results.
        return self.store.get(job.key)

    def run_inline(self, job: J.Job, fn) -> dict | None:
        """A driver-side job: the store's result, or fn() stored; a QuantstudyError is a failure."""
        rec = self.cached(job)
        if rec is not None:
            return rec
        self.log("run", job)
        started = time.perf_counter()
        try:
            result = fn()
        except QuantstudyError as exc:
            return self.finish(job, None, str(exc), time.perf_counter() - started)
        return self.finish(job, result, None, time.perf_counter() - started)

    def run_parallel(self, jobs: list[J.Job], tasks: list, kind: str, on_result=None) -> dict[str, dict]:
        by_key = {job.key: job for job in jobs}
        for job in jobs:
            self.log("run", job)
        out = {}

        def done(key, result, error, seconds):
            job = by_key[key]
            prov = {}
            if result is not None and on_result:
                result, prov = on_result(job, result)
            rec = self.finish(job, result, error, seconds, executor=self.executor.name, **prov)
            if rec is not None:
                out[job.name] = rec
        self.executor.run(tasks, done, kind=kind)
        return out

    # -- quantize ---------------------------------------------------------------------------------
    def quantize(self, qjobs: list[J.Job]) -> dict[str, dict]:
        done, pending = {}, []
        for job in qjobs:
            rec = self.store.get(job.key)
            folder = self.out / J.CHECKPOINTS / job.name
            if rec is not None and folder.is_dir() and self.store.fingerprint(folder) == rec["fingerprint"]:
                self.cached(job)
                done[job.name] = rec
            else:
                # Adopting a finished folder is for a kill between its write and the store write
                # only; a folder that changed after its job finished is never trusted.
                job.spec["may_adopt"] = rec is None
                pending.append(job)
        if not pending:
            return done
        for job in pending:   # a worker checks it sees this (the study folder on shared storage)
            job.spec["probe"] = str(self.store.path)
        if self.executor.name == "local":   # in this process: a progress bar per variant
            def local(key, spec):
                bar = self.progress.add_task(f"quantize {spec['variant']['name']}", total=None)
                try:
                    return J.do_quantize(key, spec, on_start=lambda n: self.progress.update(bar, total=n),
                                         on_layer=lambda _: self.progress.advance(bar))
                finally:
                    self.progress.remove_task(bar)
            tasks = [(job.key, local, (job.key, job.spec)) for job in pending]
        else:
            tasks = [(job.key, J.do_quantize, (job.key, job.spec)) for job in pending]

        def record(job, result):
            folder = self.out / J.CHECKPOINTS / job.name
            adopted = result.pop("adopted", False)
            return ({**result, "folder": str(folder.relative_to(self.out)),
                     "fingerprint": self.store.fingerprint(folder)}, {"adopted": adopted})
        done.update(self.run_parallel(pending, tasks, "cpu", record))
        return done

    # -- bench ------------------------------------------------------------------------------------
    def bench(self, models: list[tuple[str, Path, str]]) -> dict:
        from quantstudy.hardware import cpu_model
        from quantstudy.bench.plan import local_hardware, plan_runs

        b = self.cfg.bench
        hw = local_hardware(b.vllm_python)   # server options were checked before any work (`_run`)
        identity = {"name": hw.name, "host": platform.node(), "cpu": cpu_model()}
        fingerprints = {name: fp for name, _, fp in models}
        plan = plan_runs([(name, folder) for name, folder, _ in models], hw, b.modes, b.requests, b.concurrency,
                         b.fallback_requests, one_per_format=True)
        bjobs = [J.bench_job(self.cfg, run, fingerprints[run.name], identity) for run in plan]
        recs = {}
        pending = []
        for job in bjobs:
            rec = self.cached(job)
            if rec is not None:
                recs[job.name] = rec
            else:
                pending.append(job)
        tasks = [(job.key, J.do_bench, (job.key, job.inputs, job.spec)) for job in pending]
        if pending:
            self.say(f"[dim]bench: serving {', '.join(j.inputs['fmt'] for j in pending)} with vLLM "
                     f"(~30-60 s start-up each)[/]")
        recs.update(self.run_parallel(pending, tasks, "bench"))
        measured, skipped, emulated = [], [], []
        for job in bjobs:
            rec = recs.get(job.name)
            if rec is None:
                continue
            if rec.get("skipped"):
                skipped.append({"name": job.name, "fmt": job.inputs["fmt"], "reason": rec["skipped"]})
            elif job.inputs["support"]["status"] == "fallback":
                emulated.append({"name": job.name, "fmt": job.inputs["fmt"], "reason": job.inputs["support"]["reason"],
                                 "requests": job.inputs["requests"]})
            measured += [{**m, "variant": job.name} for m in rec["measured"]]
        return {"measured": measured, "hardware": hw.name, "skipped": skipped, "emulated": emulated}


def progress_bar(console) -> Progress:
    # Description-only columns: stages add their own bars (evaluate per task, compare per model).
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


def run_study(cfg: StudyConfig, out: str | Path, executor: str | None = None, address: str | None = None,
              console=None) -> StudyOutcome:
    """Run (or resume) the study in `out`; see the module docstring."""
    from rich.console import Console

    from quantstudy.models import resolve_model

    out = Path(out).resolve()
    console = console or Console(stderr=True)
    base_folder = Path(resolve_model(cfg.model))   # a missing model fails before anything is written
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise QuantstudyError(f"cannot use {out} as a study folder: it or a folder above it is a file") from None
    with StudyLock(out):
        return _run_locked(cfg, out, base_folder, executor, address, console)


def _run_locked(cfg: StudyConfig, out: Path, base_folder: Path, executor, address, console) -> StudyOutcome:
    from quantstudy.study.assemble import write_outputs

    model_config = json.loads((base_folder / "config.json").read_text())
    executor_obj = make_executor(executor or cfg.executor, address)
    try:
        with progress_bar(console) as progress:
            runner = _Runner(cfg, out, executor_obj, progress)
            try:
                results = _run(runner, cfg, out, base_folder, model_config)
                # The assembled results go into the store too, so `quantstudy report <study>`
                # rebuilds from the store alone. Keyed by their own content: an identical rerun
                # writes nothing.
                document = results.to_json()
                key = content_key(stage="study-results", results=document)
                if runner.store.get(key) is None:
                    runner.store.put(key, RESULTS_KIND, {"model": results.model.fingerprint}, document,
                                     keep_order=True)
            finally:
                runner.store.close()
    finally:
        executor_obj.close()
    report_dir = write_outputs(results, out)
    return StudyOutcome(results, report_dir, runner.failures)


def stored_results(study: Path) -> StudyResults:
    """The latest results a study wrote into its store (what `quantstudy report <folder>` reads)."""
    path = study / STORE if study.is_dir() else study
    if not path.is_file():
        raise QuantstudyError(f"no study store at {path} (run `quantstudy study --out {study}` first)")
    with ResultStore(path) as store:
        results = store.latest(RESULTS_KIND)
    if results is None:
        raise QuantstudyError(f"{path} holds no finished study yet: rerun the study to finish it (done jobs are kept)")
    return StudyResults.from_json(results, f"the results stored in {path}")


def _serve_plan(serving: dict, cfg: StudyConfig, out: Path):
    from quantstudy.evaluate.runner import ServePlan

    return ServePlan(served=dict(serving["served"]), python=serving.get("python"), log_dir=str(out / "logs"))


def _run(runner: _Runner, cfg: StudyConfig, out: Path, base_folder: Path, model_config: dict) -> StudyResults:
    from quantstudy.study.assemble import assemble

    store = runner.store
    model_fp = store.fingerprint(base_folder)
    # Every variant resolves (scheme, group size, recipe) before any work: a config error costs nothing.
    qjobs = [J.quantize_job(v, cfg, model_fp, cfg.model, base_folder, out, model_config) for v in cfg.variants]
    if cfg.bench and cfg.bench.server_options():   # a GPU option the engine here cannot take, likewise
        from quantstudy.bench.plan import check_engine_options

        b = cfg.bench
        try:
            check_engine_options(b.vllm_python, b.tensor_parallel_size, b.gpu_memory_utilization)
        except QuantstudyError as exc:
            raise QuantstudyError(f"{cfg.source}: bench: {exc}") from None
    start_key = content_key(stage="study", model=model_fp, config={**cfg.to_dict(), "executor": None, "source": None})
    start = store.get(start_key)
    if start is None:
        start = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        store.put(start_key, "study:start", {"model": model_fp}, start)
    runner.progress.update(runner.overall, total=len(qjobs) + 4 + len(cfg.variants))

    quantized = runner.quantize(qjobs)
    ok = [(v.name, quantized[v.name]["fingerprint"]) for v in cfg.variants if v.name in quantized]
    folders = [out / J.CHECKPOINTS / name for name, _ in ok]

    serving = J.served_identity(cfg, [(J.BASELINE, base_folder), *zip([n for n, _ in ok], folders)]) \
        if (cfg.evaluate or cfg.compare) and ok else {"served": {}}
    plan = _serve_plan(serving, cfg, out)

    evaluation = None
    if cfg.evaluate:
        from quantstudy.evaluate.runner import EvalSettings, evaluate_models
        from quantstudy.evaluate.sampling import Sampling

        job = J.evaluate_job(cfg, model_fp, ok, serving)
        s = job.inputs["settings"]
        evaluation = runner.run_inline(job, lambda: evaluate_models(
            cfg.model, folders, EvalSettings(tasks=tuple(s["tasks"]), limit=s["limit"], chat=s["chat"],
                                             seed=s["seed"], batch_size=s["batch_size"], dtype=s["dtype"],
                                             ppl_seq_len=s["ppl_seq_len"], engine=s["engine"],
                                             concurrency=s["concurrency"], twin=s["twin"],
                                             prefix_cache=s["prefix_cache"],
                                             until_decided=s.get("until_decided", False),
                                             min_recovery=s.get("min_recovery", 0.99),
                                             round_items=s.get("round", 100),
                                             sampling=Sampling(**s.get("sampling", {})),
                                             fewshot=s.get("fewshot", "zero")),
            store.path, progress=runner.progress, plan=plan))

    comparison = None
    if cfg.compare and ok:
        from quantstudy.compare.runner import compare_models

        job = J.compare_job(cfg, model_fp, ok, serving)
        comparison = runner.run_inline(job, lambda: compare_models(
            cfg.model, folders, store.path, limit=job.inputs["limit"],
            max_new_tokens=job.inputs["max_new_tokens"], seed=job.inputs["seed"], progress=runner.progress,
            plan=plan))

    bench = None
    if cfg.bench:
        models = [(J.BASELINE, base_folder, model_fp)] + [(n, f, fp) for (n, fp), f in zip(ok, folders)]
        bench = runner.bench(models)

    predicted: dict = {}
    if cfg.predict:
        from quantstudy.bench.cpu import measure_cpu
        from quantstudy.bench.views import resolve_shape

        shape = resolve_shape(cfg.predict.shape or str(base_folder))
        # every variant's format, as its quantize job resolved it (a failed variant still has one)
        formats = ["bf16", *dict.fromkeys(job.inputs["scheme"]["name"] for job in qjobs)]
        hardware = [measure_cpu() if h == "cpu" else h for h in cfg.predict.hardware]
        job = J.predict_job(cfg, shape, cfg.predict.shape or cfg.model, formats, hardware)
        rec = runner.run_inline(job, lambda: J.do_predict(job, shape))
        predicted = rec or {}

    runner.progress.update(runner.overall, total=runner.progress.tasks[0].completed)
    return assemble(cfg, base_folder, model_fp, start["started"], quantized, evaluation, comparison, bench,
                    predicted, runner.failures)
