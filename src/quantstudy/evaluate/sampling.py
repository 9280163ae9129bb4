"""Sampled generation for the generative tasks: N samples per problem (code, pass@k) and K
seeded runs (reasoning), instead of one greedy continuation.

Why: the paper scores HumanEval as pass@1 from 50 samples at temperature 0.2 (Codex's
protocol, top_p 0.95), and one greedy sample per problem is a different, noisier number. For
reasoning tasks a single greedy run cannot tell a quantization effect from the luck of one
decoding path; K seeded runs give each item a mean score and the recovery interval a second
source of variance to account for (`stats`: items, and the seeds within each item).

Two kinds of task take part (`TaskSpec.sampling` in the registry says which):

* ``code``: sampled whenever the temperature is above 0; `samples` draws per problem, the
  item score is c/n (the unbiased pass@1) and `extra["pass@k"]` keeps pass@k for the k <= n
  of `PASS_AT_K` (Chen et al. 2021's estimator, `pass_at_k`).
* ``reasoning``: sampled only with `seeds` above 1 (one seed stays greedy, as the paper
  scored GSM8K); the item score is the mean over seeds.

Each draw's request carries its own seed, derived from the draw number (0..N-1 / 0..K-1) and
the item id (`request_seed`), so a rerun -- and a resumed run scoring only missing items --
asks for exactly the same texts, and baseline and variant get the same seed on the same item.
Greedy (temperature 0, one sample, one seed) is the default and changes nothing: no version
tag, no extra fields, the very requests of before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

from quantstudy.errors import QuantstudyError
from quantstudy.inference.requests import GenerateRequest
from quantstudy.items import ItemResult

CODE = "code"
REASONING = "reasoning"
KINDS = (CODE, REASONING)
PASS_AT_K = (1, 10, 100)
# The paper (HumanEval and HumanEval+ pass@1: temperature 0.2, 50 samples); top_p 0.95 is
# Codex's, which the paper's harness follows. Applies to code tasks only.
PAPER = {"samples": 50, "temperature": 0.2, "top_p": 0.95}


@dataclass(frozen=True)
class Sampling:
    samples: int = 1          # draws per problem, code tasks
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seeds: int = 1            # seeded runs, reasoning tasks (1: greedy)

    def __post_init__(self):
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise QuantstudyError(f"--samples must be at least 1 (or 'paper'), got {self.samples}")
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise QuantstudyError(f"--seeds must be at least 1, got {self.seeds}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature >= 0):
            raise QuantstudyError(f"--temperature must be 0 (greedy) or above, got {self.temperature}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise QuantstudyError(f"--top-p must be in (0, 1], got {self.top_p}")
        # greedy decoding gives every draw the same text: N draws would be one, counted N times
        for name, n in (("--samples", self.samples), ("--seeds", self.seeds)):
            if n > 1 and self.temperature == 0:
                raise QuantstudyError(f"{name} {n} needs --temperature above 0: greedy decoding gives every "
                                      "draw the same text")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def draws(self, kind: str | None) -> int:
        """Draws per item for a task of `kind`; 0 where that task decodes greedily."""
        if kind == CODE and not self.greedy:
            return self.samples
        if kind == REASONING and self.seeds > 1:
            return self.seeds
        return 0

    def tag(self, kind: str | None) -> str:
        """The task-version suffix: empty when greedy, so greedy results keep their store keys."""
        n = self.draws(kind)
        if not n:
            return ""
        what = "n" if kind == CODE else "seeds"
        return f"|{what}{n}-t{self.temperature:g}-p{self.top_p:g}"

    def options(self) -> dict:
        """The fields that differ from greedy's defaults (what a study puts in its job key)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v != getattr(GREEDY, k)}


GREEDY = Sampling()


def resolve(samples: int | str = 1, temperature: float | None = None, top_p: float | None = None,
            seeds: int = 1) -> Sampling:
    """Sampling from the CLI's/study's spelling: `samples` a count or 'paper' (50 samples,
    temperature 0.2, top_p 0.95 -- an explicit temperature or top_p still wins)."""
    paper = isinstance(samples, str) and samples.strip().lower() == "paper"
    if isinstance(samples, str) and not paper:
        try:
            samples = int(samples)
        except ValueError:
            raise QuantstudyError(f"--samples must be a count or 'paper', got {samples!r}") from None
    base = PAPER if paper else {"samples": samples, "temperature": 0.0, "top_p": 1.0}
    return Sampling(samples=base["samples"], seeds=seeds,
                    temperature=base["temperature"] if temperature is None else temperature,
                    top_p=base["top_p"] if top_p is None else top_p)


def request_seed(draw: int, item_id: str) -> int:
    """The seed of draw `draw` (sample or run number) of item `item_id`: a hash of both, so two
    items never share a random stream and a draw's text does not depend on batching or order.
    31 bits: what every engine takes as a seed."""
    digest = hashlib.blake2b(f"{draw}\0{item_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


def expand(requests: Sequence[GenerateRequest], item_ids: Sequence[str], sampling: Sampling,
           kind: str) -> list[GenerateRequest]:
    """Each request `draws` times (item-major: item 0's draws, then item 1's, ...), sampled."""
    n = sampling.draws(kind)
    return [dataclasses.replace(r, temperature=float(sampling.temperature), top_p=float(sampling.top_p),
                                seed=request_seed(d, i))
            for r, i in zip(requests, item_ids, strict=True) for d in range(n)]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c pass: 1 - C(n-c, k) / C(n, k) (Chen et al.
    2021), as the product 1 - prod_{i=n-c+1..n} (1 - k/i), which never forms huge binomials."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise QuantstudyError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:   # every k-subset holds a passing sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def combine(draws: Sequence[ItemResult], n: int, kind: str) -> list[ItemResult]:
    """Item-major draw results (n per item, in `expand`'s order) -> one result per item.

    score: the mean over draws (= unbiased pass@1 for code). correct: at least half the draws
    right -- flips and McNemar need a yes/no per item, and a majority is the one that does not
    hinge on a single lucky draw. `extra["draws"]` keeps every draw's score (the two-level
    bootstrap in `stats` resamples them) and their seeds; code tasks add pass@k.
    """
    if n < 1 or len(draws) % n:
        raise QuantstudyError(f"{len(draws)} draw results do not split into items of {n}")
    out = []
    for start in range(0, len(draws), n):
        group = draws[start:start + n]
        first = group[0]
        if any(r.item_id != first.item_id for r in group):
            raise QuantstudyError(f"draws of item {first.item_id!r} are not contiguous")
        scores = [float(r.score) for r in group]
        mean = sum(scores) / n
        extra = {"draws": scores, "seeds": [request_seed(d, first.item_id) for d in range(n)],
                 "predictions": [r.prediction for r in group]}
        if all("cot" in r.extra for r in group):     # reasoning tasks: every draw's chain diagnostics
            extra["cot_draws"] = [r.extra["cot"] for r in group]
        if kind == CODE:
            c = sum(bool(r.correct) for r in group)
            extra.update(n=n, c=c, **{"pass@k": {str(k): pass_at_k(n, c, k) for k in PASS_AT_K if k <= n}})
        out.append(ItemResult(task=first.task, item_id=first.item_id, prediction=first.prediction,
                              correct=mean >= 0.5, score=mean, tokens=round(sum(r.tokens for r in group) / n),
                              extra=extra))
    return out


def run_sampled(engine, items: Sequence, item_ids: Sequence[str], requests: Sequence[GenerateRequest],
                score, sampling: Sampling, kind: str) -> list[ItemResult]:
    """Generate every draw of every item in one engine call, score the draws with the task's
    own `score(items, generations)`, and combine them per item."""
    n = sampling.draws(kind)
    generations = engine.generate(expand(requests, item_ids, sampling, kind))
    return combine(score([it for it in items for _ in range(n)], generations), n, kind)
