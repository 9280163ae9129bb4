"""A study as jobs: each one stage call, keyed by a content hash of everything it depends on.

Keys hash the model's file fingerprint, the scheme + recipe + calibration, the task or
workload settings and the code version (`quantstudy.__version__`), never a path or a time,
so a rerun, a moved study folder or another executor finds the same keys. Downstream keys
use the fingerprints of the checkpoints upstream jobs wrote (read back from the store), so
a rerun can tell a finished evaluation apart without touching a model.

`do_quantize` and `do_bench` are the jobs an executor may ship elsewhere (Ray): plain
functions of a JSON-able spec that return a JSON-able result and never touch the store;
the driver writes results. Everything else runs in the driver.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from quantstudy import __version__
from quantstudy.errors import QuantstudyError
from quantstudy.store import content_key

CHECKPOINTS = "checkpoints"
BASELINE = "baseline"


@dataclass
class Job:
    kind: str                 # quantize | evaluate | compare | bench | predict
    name: str                 # variant name, 'baseline', or the stage's name
    inputs: dict              # exactly what the key hashes
    spec: dict = field(default_factory=dict)   # what the worker needs (paths, options): not hashed

    @property
    def key(self) -> str:
        return content_key(**self.inputs)

    @property
    def label(self) -> str:
        return self.kind if self.name == self.kind else f"{self.kind} {self.name}"


def _plain(obj):
    """Dataclasses and enums as JSON values (for keys and records)."""
    return json.loads(json.dumps(dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj,
                                 default=lambda o: getattr(o, "value", str(o))))


# Scheme fields added after studies were stored (issue 18): at their default (None: bf16
# scales, a 16-bit KV cache) they are left out of the key, so a paper-format variant keeps
# the job key -- and the stored checkpoint -- it always had.
_LATER_SCHEME_FIELDS = (("kv_cache",), ("weights", "scale_dtype"), ("activations", "scale_dtype"))


def _scheme_key(scheme) -> dict:
    plain = _plain(scheme)
    for path in _LATER_SCHEME_FIELDS:
        parent = plain
        for key in path[:-1]:
            parent = parent.get(key) or {}
        if path[-1] in parent and parent[path[-1]] is None:
            del parent[path[-1]]
    return plain


def auto_group_size(config: dict) -> int:
    """The paper's group of 128 where every linear input width is a multiple of it, else 64/32."""
    widths = [config.get("hidden_size"), config.get("intermediate_size")]
    heads, dim = config.get("num_attention_heads"), config.get("head_dim")
    if heads and dim:
        widths.append(heads * dim)   # o_proj reads heads x head_dim, not always hidden_size
    for size in (128, 64, 32):
        if all(w and w % size == 0 for w in widths):
            return size
    raise QuantstudyError(f"no group size of 128/64/32 divides this model's widths {widths}: set group_size")


def resolve_variant(v, model_config: dict):
    """(scheme, recipe, calibration-or-None) of a VariantConfig, every preset default filled in."""
    from quantstudy.quantize.recipes import Recipe
    from quantstudy.schemes import Strategy, get_scheme

    scheme = get_scheme(v.scheme)
    if scheme.weights.scale_dtype is not None and v.group_size == "auto":
        pass   # MX/NV formats fix their group (16 or 32): 'auto' keeps it, an explicit size is refused below
    elif scheme.weights.strategy in (Strategy.GROUP, Strategy.BLOCK):
        size = auto_group_size(model_config) if v.group_size == "auto" else v.group_size
        if size is not None:
            scheme = scheme.with_group_size(size)
    elif isinstance(v.group_size, int):
        raise QuantstudyError(f"variant {v.name}: {scheme.name} has {scheme.weights.strategy.value}-wise weights, "
                              "group_size does not apply")
    if v.ignore is not None:
        scheme = scheme.with_ignore(v.ignore)
    if getattr(v, "kv_cache", None) is not None:
        from quantstudy.schemes import get_kv_cache

        scheme = scheme.with_kv_cache(get_kv_cache(v.kv_cache))
    recipe = Recipe(algorithm=v.algorithm, smoothquant=v.smoothquant, dampening=v.dampening,
                    actorder=v.actorder, mse_clip=v.mse_clip, true_sequential=v.true_sequential)
    recipe.check(scheme)
    return scheme, recipe


def quantize_job(v, cfg, model_fp: str, model_ref: str, source: Path, out: Path, model_config: dict) -> Job:
    scheme, recipe = resolve_variant(v, model_config)
    calib = cfg.calibration if recipe.needs_calibration or scheme.needs_calibration else None
    plain_scheme = _scheme_key(scheme)
    inputs = {"stage": "quantize", "name": v.name, "model": model_fp, "scheme": plain_scheme,
              "recipe": _plain(recipe), "calibration": calib and calib.record(), "dtype": "bfloat16",
              "code": __version__}
    # A user's jsonl calibration file is identified by its bytes, not its name.
    if calib and calib.source.startswith("jsonl:"):
        inputs["calibration_sha256"] = hashlib.sha256(Path(calib.source[6:]).read_bytes()).hexdigest()
    spec = {"model_ref": model_ref, "source": str(source), "folder": str(out / CHECKPOINTS / v.name),
            "scheme": v.scheme, "group_size": plain_scheme["weights"]["group_size"],
            "variant": _plain(v), "model_config": model_config, "calibration": calib and calib.record()}
    return Job("quantize", v.name, inputs, spec)


def marker_path(folder: Path) -> Path:
    return folder.with_name(folder.name + ".job")


def do_quantize(job_key: str, spec: dict, on_start=None, on_layer=None) -> dict:
    """Write the variant's checkpoint, streaming from the model's files; returns what the
    study records about it.

    The checkpoint is written where the driver will read it (the study folder), so a worker
    on another node needs that folder on a shared filesystem: the driver leaves a probe file
    there, and a worker that cannot see it stops with a one-line error instead of writing a
    checkpoint nobody reads.

    A marker next to the folder names the job that is writing it, written *before* the
    (atomic) checkpoint write starts: a folder present with its marker matching is this
    job's finished output from a run killed before the store write, and is adopted rather
    than recomputed; anything else in the way is a stale leftover and is removed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    probe = spec.get("probe")
    if probe and not Path(probe).is_file():
        import platform

        raise QuantstudyError(f"the study folder is not visible from {platform.node()} (no {probe}): quantizing "
                              "on another node needs the study folder on a filesystem every node mounts at the same "
                              "path")
    from quantstudy.quantize.calibration import CalibrationSpec
    from quantstudy.models.checkpoint import read_checkpoint_info
    from quantstudy.study.config import VariantConfig

    folder = Path(spec["folder"])
    marker = marker_path(folder)
    adopted = spec.get("may_adopt", True) and folder.is_dir() and marker.is_file() and marker.read_text() == job_key
    if adopted:
        try:
            read_checkpoint_info(folder)
        except QuantstudyError:   # removed files: not a finished checkpoint after all
            adopted = False
    if not adopted:
        if folder.exists():
            shutil.rmtree(folder)
        for tmp in folder.parent.glob(f".{folder.name}.*"):   # a killed write's temporary folder
            shutil.rmtree(tmp, ignore_errors=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(job_key)
        tmp.replace(marker)
        from quantstudy.quantize.streaming import quantize_streaming

        v = VariantConfig(**{k: tuple(x) if isinstance(x, list) else x for k, x in spec["variant"].items()})
        scheme, recipe = resolve_variant(v, spec["model_config"])
        calib = CalibrationSpec(**spec["calibration"]) if spec["calibration"] else CalibrationSpec()
        source = Path(spec["source"])
        if not source.is_dir():   # another node: the model reference resolves there (an embedded one converts)
            from quantstudy.models import resolve_model

            source = Path(resolve_model(spec["model_ref"]))
        quantize_streaming(source, scheme, folder, recipe, calib, dtype="bfloat16",
                           device=spec.get("device", "auto"), max_memory=spec.get("max_memory"),
                           source_ref=spec["model_ref"], on_start=on_start, on_layer=on_layer)
    info = read_checkpoint_info(folder)
    from quantstudy.quantize.model import aggregate_sqnr_db

    layers = info.recipe.get("layers") or []
    sqnr = [(float(r["signal_energy"]), float(r["sqnr_db"])) for r in layers]
    return {"name": spec["variant"]["name"], "format": info.scheme.name, "label": info.scheme.label,
            "algorithm": info.recipe.get("algorithm"), "recipe": info.recipe.get("recipe"),
            "calibration": info.recipe.get("calibration"), "group_size": spec["group_size"],
            "tensor_bytes": info.tensor_bytes, "disk_bytes": info.disk_bytes,
            "quantized_layers": len(info.quantized_layers),
            "sqnr_db": aggregate_sqnr_db(sqnr) if sqnr else None,
            "min_layer_sqnr_db": min(s for _, s in sqnr) if sqnr else None, "adopted": adopted}


def evaluate_job(cfg, model_fp: str, variants: list[tuple[str, str]], serving: dict) -> Job:
    """`serving`: which models the served engine takes here and on what machine (`served_identity`)."""
    e = cfg.evaluate
    settings = {"tasks": list(e.tasks), "limit": e.limit, "chat": e.chat_template, "seed": e.seed,
                "batch_size": e.batch_size, "dtype": "float32", "ppl_seq_len": 512, "engine": cfg.engine,
                "concurrency": e.concurrency, "twin": e.twin, "prefix_cache": e.prefix_cache}
    if e.until_decided:   # only then in the key: studies without it keep their stored results
        settings.update(until_decided=True, round=e.round, min_recovery=decision_floor(cfg))
    if e.fewshot != "zero":      # and shots: zero-shot studies (as before the setting) keep theirs
        settings["fewshot"] = e.fewshot
    if e.sampling().options():   # likewise sampling: greedy studies keep their keys
        settings["sampling"] = e.sampling().options()
    return Job("evaluate", "evaluate", {"stage": "evaluate", "baseline": model_fp, "variants": variants,
                                        "settings": settings, "serving": serving, "code": __version__})


def decision_floor(cfg) -> float:
    """The recovery floor evaluation decides against: the deployment's (the strictest where
    it sets one per task group), else the paper's 99%."""
    bar = cfg.deployment.min_recovery if cfg.deployment else 0.99
    if isinstance(bar, dict):
        return float(max(bar.values())) if bar else 0.99
    return float(bar)


def compare_job(cfg, model_fp: str, variants: list[tuple[str, str]], serving: dict) -> Job:
    c = cfg.compare
    return Job("compare", "compare", {"stage": "compare", "baseline": model_fp, "variants": variants,
                                      "limit": c.limit, "max_new_tokens": c.max_new_tokens, "engine": cfg.engine,
                                      "serving": serving, "seed": cfg.evaluate.seed if cfg.evaluate else 0,
                                      "code": __version__})


def served_identity(cfg, models: list[tuple[str, Path]]) -> dict:
    """Which models vLLM serves for evaluation on this machine (and which not, and why), and
    the machine: served numbers are the engine's on this hardware, so they key the jobs."""
    if cfg.engine == "hf":
        return {"served": {}}
    import platform

    from quantstudy.bench.plan import serving_plan
    from quantstudy.hardware import cpu_model

    python = cfg.bench.vllm_python if cfg.bench else None
    served = serving_plan(models, cfg.engine, python=python)
    return {"served": served, "host": platform.node(), "cpu": cpu_model(), "python": python}


def bench_job(cfg, run, fp: str, hardware: dict) -> Job:
    """A planned bench run (`bench.plan.PlannedRun`) as a job. The host and CPU model are in
    the key: a study moved to another machine measures again."""
    b = cfg.bench
    inputs = {"stage": "bench", "name": run.name, "model": fp, "fmt": run.fmt, "use_cases": list(b.use_cases),
              "scale": b.scale, "modes": list(run.modes), "requests": run.requests, "concurrency": b.concurrency,
              "rates": list(b.rates), "hardware": hardware, "support": {"status": run.status, "reason": run.reason},
              "max_output_tokens": run.max_output_tokens, "code": __version__}
    if b.server_options():   # only when set: a default study keeps its job keys
        inputs["server"] = b.server_options()
    spec = {"run": dataclasses.asdict(run), "python": b.vllm_python, "server": b.server_options()}
    return Job("bench", run.name, inputs, spec)


def do_bench(job_key: str, inputs: dict, spec: dict) -> dict:
    """Serve one model with vLLM and run the workloads (or record why it was skipped)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from quantstudy.bench.plan import PlannedRun, execute

    run = PlannedRun(**{**spec["run"], "modes": tuple(spec["run"]["modes"])})   # through JSON (Ray)
    if run.skipped:
        return {"skipped": run.reason, "measured": []}
    results = execute(run, inputs["use_cases"], inputs["scale"], inputs["concurrency"], inputs["rates"],
                      python=spec["python"], **spec.get("server", {}))
    return {"skipped": None, "measured": [r.to_dict() for r in results]}


def predict_job(cfg, shape, shape_name: str, formats: list[str], hardware: list) -> Job:
    from quantstudy.bench.cost import PRICES_FILE
    from quantstudy.bench.roofline_constants import model_fingerprint

    p = cfg.predict
    inputs = {"stage": "predict", "shape": _plain(shape), "shape_name": shape_name, "formats": formats,
              "hardware": [h if isinstance(h, str) else _plain(h) for h in hardware],
              "use_cases": list(p.use_cases),
              # the deployment: a fixed GPU count prices every format there, and its curve is drawn
              "deployment": ({"hardware": cfg.deployment.hardware, "use_case": cfg.deployment.use_case,
                              "gpus": cfg.deployment.gpus} if cfg.deployment else None),
              "prices": hashlib.sha256(PRICES_FILE.read_bytes()).hexdigest(), "roofline": model_fingerprint(),
              "code": __version__}
    return Job("predict", "predict", inputs, {"hardware": hardware})


def do_predict(job: Job, shape) -> dict:
    from quantstudy.bench.cost import cost_table

    dep = job.inputs.get("deployment") or {}
    fixed = dep.get("gpus")
    rows = []
    for use_case in job.inputs["use_cases"]:
        for row in cost_table(shape, job.inputs["formats"], job.spec["hardware"], use_case):
            rows.append({"shape": job.inputs["shape_name"], "use_case": use_case, **dataclasses.asdict(row)})
        if fixed:   # the deployment's card on its fixed count, beside the fewest-GPU rows
            for row in cost_table(shape, job.inputs["formats"], [dep["hardware"]], use_case, gpus=fixed):
                rows.append({"shape": job.inputs["shape_name"], "use_case": use_case, **dataclasses.asdict(row)})
    return {"rows": rows, "curves": deployment_curves(shape, job.inputs["shape_name"], job.inputs["formats"], dep)}


def deployment_curves(shape, shape_name: str, formats: list[str], dep: dict) -> list[dict]:
    """Each format's latency-throughput envelope on the deployment's GPUs: its fixed count, or
    the fewest that hold every format that fits a node (so all are drawn on the same GPUs)."""
    from quantstudy.bench.cost import gpus_needed
    from quantstudy.bench.deployment import predict_deployment
    from quantstudy.bench.preflight import preflight
    from quantstudy.bench.roofline_constants import USE_CASES
    from quantstudy.errors import QuantstudyError
    from quantstudy.hardware import find_gpu

    hw = find_gpu(dep.get("hardware"))
    if hw is None:   # a CPU deployment: one machine, no layouts to sweep
        return []
    prompt, output = USE_CASES[dep["use_case"]]
    needs = [gpus_needed(shape, f, hw, prompt + output) for f in formats if preflight(f, hw).runs]
    gpus = dep.get("gpus") or max([n for n in needs if n] or [1])
    out = []
    for fmt in formats:
        try:
            d = predict_deployment(shape, fmt, hw, gpus, dep["use_case"])
        except QuantstudyError:
            continue
        out.append({"shape": shape_name, "use_case": dep["use_case"], "fmt": fmt, "hardware": hw.name, "gpus": gpus,
                    "points": [dataclasses.asdict(p) for p in d.curve], "saturation_rps": d.saturation.requests_per_s,
                    "saturation_latency_s": d.saturation.latency_s})
    return out
