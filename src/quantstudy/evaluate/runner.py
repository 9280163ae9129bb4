"""Evaluate a baseline and its quantized variants on the same items, through the results store,
on the engine that serves them.

For each model and task: list the task's items for the limit, ask the store which are done
(keyed by the model's file fingerprint, the engine and its dtype, task version and
settings), score only the rest in chunks (each chunk one transaction: a kill loses at most
the chunk in flight), then read every item back from the store. Comparisons are computed
from the stored items alone, so a rerun reproduces the same report without touching a model.

Engines (`plan`): a model is scored in process (`hf`: transformers, float or fake-quant) or
served (`vllm`: the kernels a deployment runs). A served variant is compared with the
served baseline, an in-process one with the in-process baseline, so a recovery never mixes
engines. When anything is served, the run also measures what the engine itself adds
(`twin`): every served model is scored in process too -- accuracy and per-position fidelity
of served against emulated -- and the served baseline is scored a second time one request at
a time, the noise floor a quantization effect must clear (`served.py` in this package).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoTokenizer

from quantstudy.errors import QuantstudyError
from quantstudy.evaluate import summary
from quantstudy.evaluate.registry import get_task
from quantstudy.evaluate.sampling import GREEDY, Sampling
from quantstudy.evaluate.seed_floor import WITHIN_FLOOR, hold_to_floor  # noqa: F401  (WITHIN_FLOOR: the verdict readers import from here)
from quantstudy.evaluate.scoring import make_context, score_tasks
from quantstudy.evaluate import fidelity
from quantstudy.evaluate.served_runs import FIDELITY_VERSION, ServedRuns
from quantstudy.inference.hf_engine import HFEngine
from quantstudy.inference.loading import load_for_inference, load_model
from quantstudy.inference.served import inprocess_record
from quantstudy.store import ResultStore

ENGINES = ("hf", "vllm", "auto")
FEWSHOT = ("paper", "zero")


@dataclass
class EvalSettings:
    tasks: tuple[str, ...]
    limit: int | None = None
    chat: str = "auto"
    seed: int = 0
    batch_size: int = 16
    dtype: str = "float32"
    ppl_seq_len: int = 512
    engine: str = "hf"              # hf | vllm | auto (vllm where the plan serves a model)
    concurrency: int = 16           # served: requests in flight
    twin: bool = True               # served: also in process, and the served noise floor
    prefix_cache: bool = False      # served: vLLM's prefix cache (faster; scores then depend on what ran before)
    until_decided: bool = False     # accuracy tasks in rounds until every variant is decided (`adaptive`)
    min_recovery: float = 0.99      # the floor those decisions are against
    round_items: int = 100          # items per task per round; `limit` is then the budget per task
    task_limits: dict = field(default_factory=dict)   # task -> its own limit (set by the rounds)
    sampling: Sampling = GREEDY     # generative tasks: samples / seeds / temperature (`sampling`)
    fewshot: str = "paper"          # multiple choice: the paper's Leaderboard-v1 shots, or "zero"

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise QuantstudyError(f"--limit must be at least 1, got {self.limit}")
        if self.chat not in ("auto", "on", "off"):
            raise QuantstudyError(f"--chat-template must be auto, on or off, not {self.chat!r}")
        if self.fewshot not in FEWSHOT:
            raise QuantstudyError(f"--fewshot must be one of {', '.join(FEWSHOT)}, not {self.fewshot!r}")
        if self.engine not in ENGINES:
            raise QuantstudyError(f"--engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        if self.concurrency < 1:
            raise QuantstudyError(f"--concurrency must be at least 1, got {self.concurrency}")
        for name in self.tasks:
            get_task(name)
        if self.until_decided and self.round_items < 10:
            raise QuantstudyError(f"--round must be at least 10 items per task, got {self.round_items}")
        if self.until_decided and not 0.5 <= self.min_recovery <= 1.0:
            raise QuantstudyError(f"--min-recovery must be between 0.5 and 1, got {self.min_recovery}")


@dataclass
class ServePlan:
    """Which models are served and how: filled by the caller, which knows the hardware
    (`served[name]`: True, or the reason it runs in process; `urls[name]`: an endpoint)."""

    served: dict[str, bool | str] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    python: str | None = None
    log_dir: str | None = None

    def serves(self, name: str) -> bool:
        return self.served.get(name) is True


def _max_context(model, tokenizer) -> int:
    n = getattr(model.config, "max_position_embeddings", None) or getattr(tokenizer, "model_max_length", 2048)
    return int(min(n, 1 << 17))


def run_model(store: ResultStore, key: str, model, tokenizer, settings: EvalSettings, baseline_engine=None,
              progress=None) -> tuple[dict[str, list], HFEngine]:
    """Every task's items for one in-process model. Returns them with the model's engine (a
    variant's KL reads the baseline's)."""
    engine = HFEngine(model, tokenizer, batch_size=settings.batch_size, progress=False)
    ctx = make_context(tokenizer, settings, _max_context(model, tokenizer), baseline_engine)
    return score_tasks(store, key, engine, ctx, settings.tasks, progress), engine


def apply_noise_floor(report: dict) -> None:
    """A served variant's accuracy change is called real only when its whole interval lies
    beyond the engine's noise floor on that task (what BF16 moves between engines and
    batchings); otherwise its verdict becomes 'within noise floor', with a note."""
    floor = report["served"].get("floor") or {}
    for task, entry in report["tasks"].items():
        if entry["metric"] != "accuracy" or task not in floor:
            continue
        for name, c in entry["variants"].items():
            if report["primary"].get(name, "").endswith("@vllm"):
                hold_to_floor(c, task, floor[task], "the served engine's noise floor")


def _reference_sequences(store: ResultStore, key: str, model, tokenizer, settings: EvalSettings):
    """The fidelity sequences: prompts continued greedily by the in-process baseline (stored)."""
    from quantstudy.data.prompts import load_prompts

    prompts = load_prompts(fidelity.N_SEQUENCES)
    if len(store.done_items(key, fidelity.REFERENCE_TASK, FIDELITY_VERSION)) < len(prompts):
        engine = HFEngine(model, tokenizer, batch_size=settings.batch_size, progress=False)
        store.put_items(key, FIDELITY_VERSION, fidelity.reference_items(engine, tokenizer, prompts))
    return fidelity.sequences(store.get_items(key, fidelity.REFERENCE_TASK, FIDELITY_VERSION, [p.id for p in prompts]))


def _check_variants(variant_dirs: list[Path]) -> list[str]:
    for folder in variant_dirs:
        if not (folder / "config.json").is_file():
            raise QuantstudyError(f"variant {folder} is not a quantized checkpoint folder (no config.json)")
    names = [folder.name for folder in variant_dirs]
    if len(set(names)) != len(names):
        raise QuantstudyError("variant folders must have distinct names (they label the results)")
    if "baseline" in names:
        raise QuantstudyError("a variant folder may not be named 'baseline' (it labels the baseline)")
    return names


def evaluate_models(baseline: str, variants: list[str | Path], settings: EvalSettings, store_path: str | Path,
                    progress=None, allow_pickle: bool = False, plan: ServePlan | None = None,
                    items: dict | None = None) -> dict:
    """The evaluate stage: per-item results in the store, comparisons in the returned report.
    `items`, when given, receives every run's per-item results ("name@engine" -> task -> items).
    With `settings.until_decided` the accuracy tasks run in rounds (`adaptive`)."""
    if settings.until_decided:
        from quantstudy.evaluate.adaptive import evaluate_until_decided

        return evaluate_until_decided(baseline, variants, settings, store_path, progress, allow_pickle, plan)
    variant_dirs = [Path(v) for v in variants]
    names = _check_variants(variant_dirs)
    plan = plan or ServePlan()
    if settings.engine == "hf":
        plan = ServePlan()
    elif settings.engine == "vllm":
        refused = {n: r for n, r in plan.served.items() if r is not True and n in ["baseline", *names]}
        plan = dataclasses.replace(plan, served={n: True for n in ["baseline", *names]})
        if refused:
            raise QuantstudyError("--engine vllm cannot serve " + "; ".join(f"{n}: {r}" for n, r in refused.items())
                                  + " (use --engine auto to evaluate those in process)")
    served_any = any(plan.serves(n) for n in names) or plan.serves("baseline")
    with ResultStore(store_path) as store:
        base_model, tokenizer, base_folder = load_model(baseline, dtype=settings.dtype, allow_pickle=allow_pickle)
        for name, folder in zip(names, variant_dirs):
            if AutoTokenizer.from_pretrained(folder, trust_remote_code=False).get_vocab() != tokenizer.get_vocab():
                raise QuantstudyError(f"variant {name} has a different tokenizer from the baseline")
        max_context = _max_context(base_model, tokenizer)
        folders = {"baseline": Path(base_folder), **dict(zip(names, variant_dirs))}
        base_key = f"{store.fingerprint(base_folder)}:{settings.dtype}"
        served = None
        if served_any:   # served first: their stored scores are what the in-process twins compare with
            seqs = _reference_sequences(store, base_key, base_model, tokenizer, settings) if settings.twin else []
            served = ServedRuns(store, tokenizer, settings, plan, folders, max_context, seqs, progress)
            served.run([n for n in ["baseline", *names] if n == "baseline" or plan.serves(n)])
        in_process = [n for n in names if not plan.serves(n) or settings.twin]
        results, models, engines = {}, {}, {}
        if in_process or not served_any or settings.twin:
            base_items, base_engine = run_model(store, base_key, base_model, tokenizer, settings, progress=progress)
            results["baseline@hf"] = base_items
            engines["baseline@hf"] = inprocess_record("float", settings.dtype).to_dict()
            if served is not None and settings.twin:
                served.compare_twin("baseline", base_engine, base_key)
            for name in in_process:
                folder = folders[name]
                variant = load_for_inference(folder, settings.dtype)
                model = variant.load()
                key = f"{store.fingerprint(folder)}:{variant.how}:{settings.dtype}"
                results[f"{name}@hf"], engine = run_model(store, key, model, tokenizer, settings, base_engine, progress)
                engines[f"{name}@hf"] = inprocess_record(variant.how, settings.dtype).to_dict()
                models[name] = {"ref": str(folder), "key": key, "scheme": variant.scheme.label if variant.scheme else None}
                if served is not None and plan.serves(name):
                    served.compare_twin(name, engine, key)
                del model, engine
            del base_engine
        models["baseline"] = {"ref": str(baseline), "key": base_key}
        if served is not None:
            results.update(served.results)
            engines.update(served.records)
            for run in served.results:
                models.setdefault(run.split("@")[0], {"ref": str(folders[run.split("@")[0]])})[f"key@{run.split('@')[1]}"] = \
                    served.keys[run]
            served_report = served.report(results, seed=settings.seed)
    primary = {n: (f"{n}@vllm" if plan.serves(n) else f"{n}@hf") for n in names}
    if items is not None:
        items.update(results)
    report = summary.compare_engines(results, primary, seed=settings.seed)
    report["models"] = models
    report["engines"] = engines
    report["primary"] = primary
    report["not_served"] = {n: r for n, r in plan.served.items() if isinstance(r, str)}
    if served is not None:
        report["served"] = served_report
        apply_noise_floor(report)
    report["settings"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(settings).items()
                          if k != "sampling"}
    if settings.sampling != GREEDY:   # only then: a greedy run's report stays what it was
        report["settings"]["sampling"] = dataclasses.asdict(settings.sampling)
    return report
