"""A study's configuration: one YAML file (or none: the paper's study on the embedded model).

Sections left out take the defaults below; `compare`, `bench`, `predict` and `deployment`
can be `false` to skip them. Every error names the file, the line and the field
("study.yaml line 7: variants[2].scheme: unknown scheme 'w5a5'", see `validate`).

Defaults reproduce the paper's grid (BF16; W8A8-FP8 by RTN; W8A8-INT8 by SmoothQuant 0.8 +
GPTQ; W4A16 by GPTQ, AWQ and RTN) with limits sized so the whole study, vLLM bench
included, runs in about 40 minutes on a 2-core CPU (2026-12-05, v0.4.0: served evaluation with its
in-process twins ~14 min, an emulated-FP8 bench ~12 min on a CPU without FP8 units).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field, replace
from pathlib import Path

from quantstudy.errors import QuantstudyError
from quantstudy.quantize.calibration import CalibrationSpec
from quantstudy.study.validate import Checker, Doc, show

DEFAULT_MODEL = "smollm2-135m"
# The paper's grid. group_size "auto": 128 (the paper's) where the model's widths allow it,
# else the largest of 64/32 that divides them (SmolLM2's 576 needs 64).
DEFAULT_VARIANTS = (
    {"name": "w8a8-fp8", "scheme": "w8a8-fp8", "algorithm": "rtn"},
    {"name": "w8a8-int8", "scheme": "w8a8-int8", "algorithm": "gptq", "smoothquant": 0.8},
    {"name": "w4a16-gptq", "scheme": "w4a16", "algorithm": "gptq"},
    {"name": "w4a16-awq", "scheme": "w4a16", "algorithm": "awq"},
    {"name": "w4a16-rtn", "scheme": "w4a16", "algorithm": "rtn"},
)

# `variants: frontier` (or `quantstudy study --preset frontier`): the paper's five plus the
# formats deployed since (issue 18) -- NVFP4 W4A4 (Blackwell's native FP4) and FP4 weights
# alone with NVFP4's and MXFP4's scales (RTN, and GPTQ to get accuracy back), MXFP8, Hopper's W4A8-FP8, and an FP8 KV cache on the paper's
# INT8 variant (the cache is an axis of its own: same weights, K/V stored in FP8).
FRONTIER_VARIANTS = DEFAULT_VARIANTS + (
    {"name": "nvfp4-rtn", "scheme": "nvfp4", "algorithm": "rtn"},
    {"name": "nvfp4-gptq", "scheme": "nvfp4", "algorithm": "gptq"},
    {"name": "nvfp4a16-rtn", "scheme": "nvfp4a16", "algorithm": "rtn"},
    {"name": "nvfp4a16-gptq", "scheme": "nvfp4a16", "algorithm": "gptq"},
    {"name": "mxfp4a16-gptq", "scheme": "mxfp4a16", "algorithm": "gptq"},
    {"name": "mxfp8", "scheme": "mxfp8", "algorithm": "rtn"},
    {"name": "w4a8-fp8-gptq", "scheme": "w4a8-fp8", "algorithm": "gptq"},
    {"name": "w8a8-int8-kvfp8", "scheme": "w8a8-int8", "algorithm": "gptq", "smoothquant": 0.8, "kv_cache": "fp8"},
)
VARIANT_PRESETS = {"paper": DEFAULT_VARIANTS, "frontier": FRONTIER_VARIANTS}
# The frontier study also scores perplexity on 2048-token windows: where an FP8 KV cache shows.
FRONTIER_EXTRA_TASKS = ("ppl_long",)


@dataclass(frozen=True)
class VariantConfig:
    name: str
    scheme: str
    group_size: int | str | None = "auto"   # "auto", an int, or None (the preset's own)
    algorithm: str = "rtn"
    smoothquant: float | None = None
    dampening: float = 0.01
    actorder: bool = True
    mse_clip: bool = True
    true_sequential: bool = True
    ignore: tuple[str, ...] | None = None      # None: the scheme's default (lm_head)
    kv_cache: str | None = None                 # 'fp8' / 'fp8-head': an FP8 KV cache (None: 16-bit)


@dataclass(frozen=True)
class EvaluateConfig:
    # Log-likelihood tasks only by default: a 135M model scores ~0 on GSM8K/HumanEval, where
    # recovery is noise, and generation costs 10x more per item on this CPU.
    tasks: tuple[str, ...] = ("arc_challenge", "hellaswag", "winogrande", "ppl", "kl")
    # 100 items per task: ~7 min for six models here (the study ~18 min in all on 2 idle
    # cores); per-task recovery intervals about +-12 points (+-17 at 50 items). Raise it
    # where time allows: the width shrinks as 1/sqrt(items).
    limit: int | None = 100
    chat_template: str = "auto"
    batch_size: int = 16
    seed: int = 0
    concurrency: int = 16            # served: requests in flight
    # served: each served model in process too (served vs emulated) and the served baseline again
    # one request at a time (the engine's noise floor)
    twin: bool = True
    prefix_cache: bool = False       # served: off, so a score never depends on what the server ran before
    # Score the accuracy tasks in rounds of `round` items and stop each once every variant is
    # decided against the deployment's recovery floor; `limit` is then the budget per task.
    until_decided: bool = False
    round: int = 100
    # Sampled generation (`evaluate.sampling`): HumanEval pass@1 from `samples` per problem
    # ('paper': 50 at temperature 0.2, top_p 0.95), GSM8K over `seeds` runs. Default: greedy.
    samples: int | str = 1
    temperature: float | None = None
    top_p: float | None = None
    seeds: int = 1
    # Multiple-choice shots: "paper" (the Open LLM Leaderboard v1's, as the paper: ARC-Challenge 25,
    # HellaSwag 10, Winogrande 5, MMLU 5) or "zero". The embedded default study runs "zero"
    # (StudyConfig below): 25-shot ARC costs ~12x the 0-shot item on 2 CPU cores.
    fewshot: str = "paper"

    def __post_init__(self):
        if self.fewshot not in ("paper", "zero"):
            raise QuantstudyError(f"fewshot must be 'paper' or 'zero', got {self.fewshot!r}")
        self.sampling()   # a combination that cannot run (e.g. 5 seeds at temperature 0) fails at parse time

    def sampling(self):
        from quantstudy.evaluate.sampling import resolve

        return resolve(self.samples, self.temperature, self.top_p, self.seeds)


@dataclass(frozen=True)
class CompareConfig:
    # 32 prompts (four generation batches per model, ~4 min for six models on 2 cores): at 8
    # the STS intervals were too wide to say whether the paper's observation holds.
    limit: int | None = 32
    max_new_tokens: int = 64


@dataclass(frozen=True)
class BenchConfig:
    use_cases: tuple[str, ...] = ("instruction-following",)
    scale: float = 0.25              # 64/32 tokens: start-up, not decoding, dominates on a CPU
    # The paper's two regimes: one request at a time (latency) and concurrent load (throughput).
    modes: tuple[str, ...] = ("synchronous", "concurrent")   # sync = synchronous, async = concurrent
    requests: int = 4                # per profile; a concurrent run takes at least 2 x concurrency
    # Formats the engine only emulates (FP8 on CPU: ~20x slower): this many synchronous
    # requests, no load profiles -- their speed is the finding, their curve is not.
    fallback_requests: int = 1
    concurrency: int = 4
    rates: tuple[float, ...] = ()
    vllm_python: str | None = None   # default: .venv-vllm or $QUANTSTUDY_VLLM_PYTHON
    # The server on a GPU box (a CPU engine refuses the first two): GPUs per model, vLLM's
    # memory share (None: vLLM's default), its context (None: the longest request, rounded
    # up), eager mode (None: eager on a CPU, CUDA graphs on a GPU).
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    enforce_eager: bool | None = None

    def server_options(self) -> dict:
        """The options above that differ from their defaults (so a default study's job keys
        stay what they were)."""
        defaults = BenchConfig()
        return {k: getattr(self, k) for k in ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len",
                                              "enforce_eager") if getattr(self, k) != getattr(defaults, k)}


@dataclass(frozen=True)
class PredictConfig:
    shape: str | None = None         # None: the study model's own config
    hardware: tuple[str, ...] = ("a6000", "a100", "h100", "cpu")
    use_cases: tuple[str, ...] = ("instruction-following", "code-completion")


@dataclass(frozen=True)
class DeploymentConfig:
    hardware: str = "a6000"          # the paper's cost-efficiency card
    mode: str = "sync"
    use_case: str = "instruction-following"
    latency_slo_s: float | None = None
    min_recovery: float | dict = 0.99
    budget_usd_per_hour: float | None = None
    # Price every format on exactly this many GPUs of `hardware` (a node: 8) instead of on the
    # fewest that hold it; the report then plots each format's latency-throughput curve there.
    gpus: int | None = None


@dataclass(frozen=True)
class StudyConfig:
    model: str = DEFAULT_MODEL
    variants: tuple[VariantConfig, ...] = tuple(VariantConfig(**v) for v in DEFAULT_VARIANTS)
    # 16 x 256 tokens: GPTQ ~45 s, AWQ ~55 s per variant here; the paper used 256-768 x 4-8k.
    calibration: CalibrationSpec = field(default_factory=lambda: CalibrationSpec(num_samples=16, seq_len=256))
    # The embedded default study (135M model, 2 CPU cores): zero-shot multiple choice. Measured
    # 2026-12-06, in process on 2 loaded cores, 10 items: ARC-Challenge 0-shot 9.6 s vs 25-shot
    # 123.5 s, HellaSwag 7.8 vs 87.7 s (10-shot), Winogrande 2.6 vs 11.4 s (5-shot).
    evaluate: EvaluateConfig | None = field(default_factory=lambda: EvaluateConfig(fewshot="zero"))
    compare: CompareConfig | None = field(default_factory=CompareConfig)
    bench: BenchConfig | None = field(default_factory=BenchConfig)
    predict: PredictConfig | None = field(default_factory=PredictConfig)
    deployment: DeploymentConfig | None = field(default_factory=DeploymentConfig)
    executor: str = "local"
    # Which engine evaluates and compares: auto = vLLM where it runs the format natively on this
    # machine (what a deployment serves), in process otherwise; hf = in process; vllm = served only.
    engine: str = "auto"
    source: str = "defaults"         # the file it came from (for messages)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        if out["evaluate"]:   # greedy (the default) leaves no trace: a default study keeps its key
            defaults = EvaluateConfig()
            for k in SAMPLING_FIELDS:
                if out["evaluate"][k] == getattr(defaults, k):
                    del out["evaluate"][k]
        return out


SAMPLING_FIELDS = ("samples", "temperature", "top_p", "seeds")


TOP_LEVEL = ("model", "variants", "calibration", "evaluate", "compare", "bench", "predict", "deployment",
             "executor", "engine", "protocol")
# `protocol: paper`: the paper's evaluation protocol -- Leaderboard-v1 shots, HumanEval pass@1 from
# 50 samples at temperature 0.2 (top-p 0.95), reasoning tasks over 3 seeds (llm-compressor's
# maintainers' count in their FP4 threads) at the same temperature, on the paper's academic tasks
# we can run offline -- unless the study's `evaluate:` section says otherwise field by field.
# `quick` (the default) leaves `evaluate:` as written.
PROTOCOLS = ("quick", "paper")
PAPER_PROTOCOL = {"tasks": ("arc_challenge", "hellaswag", "winogrande", "mmlu", "gsm8k", "humaneval", "ppl", "kl"),
                  "fewshot": "paper", "samples": "paper", "seeds": 3}


def parse_config(text: str, name: str = "study.yaml") -> StudyConfig:
    """A StudyConfig from YAML text; every error is one line naming `name`, the line and the field."""
    doc = Doc(name, text)
    raw = doc.value
    if not isinstance(raw, dict):
        doc.fail((), f"must be a mapping of sections ({', '.join(TOP_LEVEL)}), not {show(raw)}")
    check = Checker(doc)
    for key in raw:
        if key not in TOP_LEVEL:
            close = difflib.get_close_matches(key, TOP_LEVEL, n=1)
            doc.fail((key,), "unknown field" + (f" (did you mean {close[0]!r}?)" if close
                                                 else f"; known: {', '.join(TOP_LEVEL)}"))
    if "model" not in raw:
        doc.fail((), "missing field 'model' (an embedded name such as smollm2-135m, a model folder or a .gguf)",
                 line=1)
    out = {"model": check.str_(raw["model"], ("model",)), "source": name}
    preset = None
    if isinstance(raw.get("variants"), str):   # a named set: paper | frontier
        preset = raw["variants"].strip().lower()
        if preset not in VARIANT_PRESETS:
            doc.fail(("variants",), f"unknown variant set {raw['variants']!r}; choose {', '.join(VARIANT_PRESETS)} "
                     "or give a list of variants")
        out["variants"] = tuple(VariantConfig(**v) for v in VARIANT_PRESETS[preset])
    elif "variants" in raw:
        v = raw["variants"]
        if not isinstance(v, list) or not v:
            doc.fail(("variants",), f"must be a non-empty list of variants, got {show(v)}")
        variants = []
        for i, item in enumerate(v):
            if not isinstance(item, dict):
                doc.fail(("variants", i), f"must be a mapping with name and scheme, got {show(item)}")
            for req in ("name", "scheme"):
                if req not in item:
                    doc.fail(("variants", i), f"missing field {req!r}")
            variants.append(check.section(item, ("variants", i), VariantConfig))
        names = [x.name for x in variants]
        for i, n in enumerate(names):
            if n in names[:i]:
                doc.fail(("variants", i, "name"), f"{n!r} is used by an earlier variant (names label results)")
        out["variants"] = tuple(variants)
    out["calibration"] = check.section(raw.get("calibration"), ("calibration",), CalibrationSpec,
                                       default=StudyConfig().calibration)
    protocol = check.str_(raw["protocol"], ("protocol",), PROTOCOLS) if "protocol" in raw else "quick"
    if protocol == "paper":   # the protocol's evaluation, under whatever the study's section sets itself
        out["evaluate"] = replace(EvaluateConfig(), **PAPER_PROTOCOL)
    for key, cls in (("evaluate", EvaluateConfig), ("compare", CompareConfig), ("bench", BenchConfig),
                     ("predict", PredictConfig), ("deployment", DeploymentConfig)):
        if key in raw:
            out[key] = check.section(raw[key], (key,), cls, optional=True, default=out.get(key))
    if preset == "frontier":
        out["evaluate"] = with_frontier_tasks(out.get("evaluate", EvaluateConfig()), raw.get("evaluate"))
    if "executor" in raw:
        out["executor"] = check.str_(raw["executor"], ("executor",), ("local", "ray"))
    if "engine" in raw:
        out["engine"] = check.str_(raw["engine"], ("engine",), ("auto", "hf", "vllm"))
    return StudyConfig(**out)


def with_frontier_tasks(evaluate: "EvaluateConfig | None", given) -> "EvaluateConfig | None":
    """The frontier set's evaluation: the default tasks plus long-context perplexity, unless the
    study names its tasks itself (or runs no evaluation)."""
    if evaluate is None or (isinstance(given, dict) and "tasks" in given):
        return evaluate
    return replace(evaluate, tasks=(*evaluate.tasks, *FRONTIER_EXTRA_TASKS))


def preset_study(name: str) -> StudyConfig:
    """The default study with a named variant set ('paper' is the default study itself)."""
    cfg = parse_config(f"model: {DEFAULT_MODEL}\nvariants: {name}\n", f"--preset {name}")
    default = StudyConfig().evaluate    # the embedded study's evaluation (zero-shot), plus the preset's tasks
    return replace(cfg, evaluate=with_frontier_tasks(default, None) if name == "frontier" else default)


def load_config(path: str | Path | None) -> StudyConfig:
    """The study in `path`, or the default study when `path` is None."""
    if path is None:
        return StudyConfig()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise QuantstudyError(f"study config {path} is not UTF-8 text (byte {exc.start}): a YAML file is expected") \
            from None
    except OSError as exc:
        raise QuantstudyError(f"cannot read study config {path}: {exc.strerror or exc}") from None
    return parse_config(text, path.name)
