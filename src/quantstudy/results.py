"""Floor 5, results: the typed study results that `study/` produces and `recommend` and
`report` consume -- and `results.json`, their serialisation.

A study's results are one `StudyResults`: the model, its variants, and each stage's record
(`evaluate.summary.EvaluationReport`, `compare.records.ComparisonReport`, the bench's
`MeasuredRun`s and `PredictedRow`s), the deployment constraints, provenance and failures.
`results.json` is `to_json()` plus `schema_version`; `load_results` reads a file back and
says in one line when it cannot (another program's JSON, or a newer schema).

Schema versions: 1 -- results.json before this schema was versioned (the same shape, without
the key; read as is); 2 -- the versioned schema; 3 -- `evaluate.adaptive` (evaluated until
decided; empty otherwise).

The accessors the consumers share (`measured_points`, `predicted_rows`, `accuracy_of`,
`group_recovery`) live here, one spelling for each field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from quantstudy.bench.records import MeasuredRun, PredictedCurve, PredictedRow
from quantstudy.compare.records import ComparisonReport
from quantstudy.errors import QuantstudyError
from quantstudy.evaluate.summary import EvaluationReport
from quantstudy.hardware import hardware_key
from quantstudy.serial import from_json, to_json

SCHEMA_VERSION = 3
BASELINE = "baseline"
# Which evaluate tasks make up a task group for per-group recovery constraints.
TASK_GROUPS: dict[str, tuple[str, ...]] = {
    "academic": ("mmlu", "mmlu_cot", "mmlu_pro", "arc_challenge", "arc", "hellaswag", "winogrande", "gsm8k",
                 "truthfulqa", "ifeval", "bbh", "math", "math_hard", "gpqa", "musr"),
    "code": ("humaneval", "humaneval_plus", "mbpp"),
    "long-context": ("ruler", "ruler_mk", "ruler_mv", "ruler_mq", "ruler_vt"),
}


@dataclass(frozen=True)
class ModelInfo:
    ref: str
    name: str
    params: int | None = None
    fingerprint: str | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class VariantInfo:
    name: str
    format: str
    label: str | None = None
    algorithm: str | None = None
    recipe: dict | None = None
    calibration: dict | None = None
    group_size: int | None = None
    size_bytes: int | None = None
    size_vs_bf16: float | None = None
    sqnr_db: float | None = None
    checkpoint: str | None = None
    fingerprint: str | None = None


@dataclass(frozen=True)
class Skipped:
    name: str
    fmt: str
    reason: str


@dataclass(frozen=True)
class Emulated:
    name: str
    fmt: str
    reason: str
    requests: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BenchSection:
    hardware: str                                  # the engine's hardware entry ('cpu', 'h100', ...)
    measured: tuple[MeasuredRun, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    emulated: tuple[Emulated, ...] = ()


@dataclass(frozen=True)
class MeasuredPoint:
    """One measured run, flat: what the recommendation and the report tables read."""

    fmt: str
    use_case: str
    mode: str                     # sync | async
    profile: str                  # sync | conc=N | rate=R/s | max
    scale: float
    gpus: int
    prompt_tokens: int
    output_tokens: int
    requests_per_s: float | None
    output_tokens_per_s: float | None
    e2e_mean_s: float | None
    e2e_median_s: float | None
    e2e_p90_s: float | None
    ttft_median_s: float | None
    ttft_p90_s: float | None
    itl_median_s: float | None
    itl_p90_s: float | None


@dataclass(frozen=True)
class Deployment:
    hardware: str | None = None
    mode: str = "sync"
    use_case: str = "instruction-following"
    latency_slo_s: float | None = None
    min_recovery: float | dict[str, float] = 0.99
    budget_usd_per_hour: float | None = None
    gpus: int | None = None


@dataclass(frozen=True)
class Failure:
    stage: str
    name: str
    error: str


@dataclass(frozen=True)
class StudyResults:
    model: ModelInfo
    variants: tuple[VariantInfo, ...] = ()
    evaluate: EvaluationReport | None = None
    compare: ComparisonReport | None = None
    bench: BenchSection | None = None
    predicted: tuple[PredictedRow, ...] = ()
    curves: tuple[PredictedCurve, ...] = ()     # the deployment's latency-throughput curve per format
    deployment: Deployment | None = None
    provenance: dict = field(default_factory=dict)
    failures: tuple[Failure, ...] = ()
    schema_version: int = SCHEMA_VERSION

    # -- serialisation ------------------------------------------------------------------------
    def to_json(self) -> dict:
        return to_json(self)

    @classmethod
    def from_json(cls, data, what: str = "study results") -> "StudyResults":
        """Typed results from a results dict (a results.json's content, any schema version
        this code reads). Extra keys (a report's `recommendation`) are ignored."""
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise QuantstudyError(f"{what} is not a results object (a JSON mapping), but {type(data).__name__}")
        version = data.get("schema_version", 1)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise QuantstudyError(f"{what} has schema version {version!r}, written by a newer quantstudy; this one "
                                  f"reads versions 1 to {SCHEMA_VERSION}: upgrade quantstudy to read it")
        return from_json(cls, {**data, "schema_version": SCHEMA_VERSION}, what)

    # -- what the consumers read --------------------------------------------------------------
    def variant(self, name: str) -> VariantInfo | None:
        return next((v for v in self.variants if v.name == name), None)

    def label(self, name: str) -> str:
        if name == BASELINE:
            return "BF16"
        v = self.variant(name)
        return (v.label if v else None) or name

    def measured_points(self) -> list[MeasuredPoint]:
        out = []
        for run in self.bench.measured if self.bench else ():
            m = run.metrics
            out.append(MeasuredPoint(
                str(run.fmt).lower(), run.use_case, run.mode, run.profile_label, float(run.scale), run.gpus,
                run.prompt_tokens, run.output_tokens,
                *(m.get(k) for k in ("requests_per_s", "output_tokens_per_s", "e2e_mean_s", "e2e_median_s",
                                     "e2e_p90_s", "ttft_median_s", "ttft_p90_s", "itl_median_s", "itl_p90_s"))))
        return out

    def predicted_rows(self) -> list[PredictedRow]:
        """The predictions, hardware names canonical (so any spelling matches)."""
        from dataclasses import replace

        return [replace(r, hardware=hardware_key(r.hardware)) for r in self.predicted]

    def accuracy_of(self, name: str) -> tuple[float | None, tuple[float, float] | None, str]:
        """(average recovery, its interval, verdict) of a variant; the baseline is 1 by definition."""
        if name == BASELINE:
            return 1.0, (1.0, 1.0), "baseline"
        agg = (self.evaluate.average if self.evaluate else {}).get(name)
        if agg is None or agg.recovery is None:
            return None, None, ""
        return float(agg.recovery), (tuple(agg.recovery_ci) if agg.recovery_ci else None), agg.verdict

    def group_recovery(self, name: str, group: str) -> tuple[float | None, tuple[float, float] | None]:
        """Recovery of a task group's average (ratio of averages, as the paper's average row).
        The interval is known only for a one-task group (its task's interval)."""
        if name == BASELINE:
            return 1.0, (1.0, 1.0)
        members = TASK_GROUPS.get(group, ())
        comps = [e.variants[name] for t, e in (self.evaluate.tasks if self.evaluate else {}).items()
                 if t in members and e.metric == "accuracy" and name in e.variants]
        base = sum(c.baseline_mean for c in comps)
        if not comps or base <= 0:
            return None, None
        ci = comps[0].recovery_ci if len(comps) == 1 else None
        return sum(c.variant_mean for c in comps) / base, (tuple(ci) if ci else None)


    def fidelity_of(self, name: str) -> dict:
        """A variant's resolved fidelity signals against the baseline (keys of
        `recommend.decision.Fidelity`): KL and top-1 agreement from the `kl` task, perplexity
        recovery from `ppl`, each with its bootstrap interval; absent where not measured."""
        out = {}
        for task, e in (self.evaluate.tasks if self.evaluate else {}).items():
            c = e.variants.get(name)
            if c is None:
                continue
            if e.metric == "divergence":
                out.update(kl=c.kl, kl_ci=tuple(c.kl_ci), top1=c.top1_agreement, top1_ci=tuple(c.top1_ci))
            elif e.metric == "perplexity" and c.recovery_ci:
                out.update(ppl_recovery=c.recovery, ppl_ci=tuple(c.recovery_ci))
        return out

    def noise_floor(self) -> dict:
        """The baseline against itself where the study measured it: BF16 served against the
        in-process baseline (prefill `kl` and `top1` agreement means), else Nones."""
        engine = ((self.evaluate.served if self.evaluate else {}).get("noise_floor") or {}).get("engine") or {}
        prefill = (engine.get("fidelity") or {}).get("prefill") or {}
        return {"kl": (prefill.get("kl") or {}).get("mean"), "top1": (prefill.get("top1") or {}).get("mean")}


def load_results(path: str | Path) -> StudyResults:
    """A results.json (or a report's copy of it) as typed results, or a one-line error."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise QuantstudyError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise QuantstudyError(f"{path} is not valid JSON: {exc}") from None
    return StudyResults.from_json(data, str(path))
