"""The compare stage's records: what `compare_models` returns (as JSON) and the study keeps."""

from __future__ import annotations

from dataclasses import dataclass, field

from quantstudy.compare.verdict import Observation


@dataclass(frozen=True)
class Stat:
    """A mean over prompts and its bootstrap interval."""

    mean: float
    ci: tuple[float, float]


@dataclass(frozen=True)
class Aggregates:
    n: int
    rouge1: Stat
    rougeL: Stat
    bertscore: Stat
    sts: Stat
    exact_match: Stat
    confidence: float = 0.95
    n_bootstrap: int = 2000
    seed: int = 0
    first_divergence: dict | None = None   # {median, mean, never_diverged} where token ids are known

    def get(self, metric: str) -> Stat:
        return getattr(self, metric)


@dataclass(frozen=True)
class VariantSimilarity:
    """One variant's answers against the baseline's: aggregates, the paper's observation,
    per-category means, every prompt's scores and the most divergent examples."""

    name: str
    aggregates: Aggregates
    folder: str = ""
    model_id: str = ""
    scheme: str | None = None
    paper_observation: Observation | None = None
    per_category: dict = field(default_factory=dict)
    examples: tuple[dict, ...] = ()
    per_prompt: tuple[dict, ...] = ()
    exact_tokens: bool = False
    engine: str = "hf"                      # what generated its answers (and the baseline's it is scored against)
    engine_record: dict | None = None


@dataclass(frozen=True)
class ComparisonReport:
    variants: tuple[VariantSimilarity, ...]
    baseline: dict = field(default_factory=dict)     # {ref, folder, model_id}
    settings: dict = field(default_factory=dict)
