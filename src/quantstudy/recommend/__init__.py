"""Floor 6, recommend: deployment constraints -> a format, the cheapest feasible choice, the
Pareto front, and the reasons.

Reads only typed study results (`results.StudyResults`); never runs a model. `candidates`
judges each candidate against the constraints, `costs` prices it (measured where the bench
ran it at full size on the deployment's hardware, else predicted), `explain` says why.

The choice is the cheapest per query among the feasible candidates (ties -> closer to BF16
on the resolved signals): the paper's framing, where a format that meets the accuracy bar is
judged by what it costs to serve. "Meets" is decided on evidence, never on a point estimate
(`decision`): a recovery interval above the floor, or -- where accuracy is unresolved at the
study's sample size -- fidelity signals (KL, top-1, perplexity) resolved close to BF16.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

from quantstudy.errors import QuantstudyError
from quantstudy.hardware import hardware_key
from quantstudy.recommend.candidates import Candidate, better, candidate, pareto_front, ranking
from quantstudy.recommend.explain import explain
from quantstudy.results import BASELINE, TASK_GROUPS, StudyResults

__all__ = ["BASELINE", "Candidate", "Recommendation", "pareto_front", "recommend", "resolve_deployment"]

DEFAULT_USE_CASE = "instruction-following"
# The paper calls a format near-lossless at ~99% recovery; used only when none is given.
DEFAULT_MIN_RECOVERY = 0.99


@dataclass(frozen=True)
class Recommendation:
    deployment: dict
    chosen: str | None
    candidates: tuple[Candidate, ...]
    pareto: tuple[str, ...]
    explanation: str
    notes: tuple[str, ...] = field(default=())
    ranking: tuple[str, ...] = field(default=())   # every candidate, best first (`candidates.ranking`)

    def candidate(self, name: str) -> Candidate:
        return next(c for c in self.candidates if c.name == name)

    def to_dict(self) -> dict:
        # Through JSON and back: tuples become lists, so this equals what results.json holds.
        return json.loads(json.dumps(asdict(self)))


def resolve_deployment(results: StudyResults, override: dict | None = None) -> dict:
    """The deployment a recommendation is for: defaults, then the study's, then `override`,
    checked (one line when it cannot be used); 'cpu' names the CPU the study measured."""
    dep = {"hardware": None, "mode": "sync", "use_case": DEFAULT_USE_CASE, "latency_slo_s": None,
           "min_recovery": DEFAULT_MIN_RECOVERY, "budget_usd_per_hour": None,
           **(asdict(results.deployment) if results.deployment else {}), **(override or {})}
    if dep["mode"] not in ("sync", "async"):
        raise QuantstudyError(f"deployment mode must be sync or async, not {dep['mode']!r}")
    if not dep["hardware"]:
        raise QuantstudyError("the deployment needs a hardware name (e.g. a6000, h100)")
    if str(dep["hardware"]).lower() == "cpu":   # a CPU has no catalogue entry: the one the study measured
        cpus = sorted({r.hardware for r in results.predicted_rows() if r.hardware.startswith("cpu")})
        if not cpus:
            raise QuantstudyError("hardware cpu: this study predicted no CPU (add cpu to predict.hardware and "
                                  "rerun the study: the CPU is measured once)")
        dep["hardware"] = cpus[0]
    bar = dep["min_recovery"]
    dep["min_recovery"] = {"average": float(bar)} if isinstance(bar, (int, float)) else dict(bar or {})
    for group in dep["min_recovery"]:
        if group != "average" and group not in TASK_GROUPS:
            raise QuantstudyError(f"unknown task group {group!r}; known: average, {', '.join(TASK_GROUPS)}")
    return dep


def recommend(results: StudyResults | dict, deployment: dict | None = None) -> Recommendation:
    """Pick a format for `deployment` (merged over the results' deployment); see the module docstring.
    `results` may be typed or a results dict (a results.json's content)."""
    results = StudyResults.from_json(results)
    dep = resolve_deployment(results, deployment)
    hw = hardware_key(dep["hardware"])
    predicted = results.predicted_rows()
    shapes = list(dict.fromkeys(r.shape for r in predicted))
    notes = []
    if len(shapes) > 1:
        # Several model shapes predicted: use the one named like the study's model, else the first.
        wanted = next((s for s in shapes if s in (results.model.name, results.model.ref)), shapes[0])
        predicted = [r for r in predicted if r.shape == wanted]
        notes.append(f"predictions for {wanted} used (also present: {', '.join(map(str, shapes[1:]))})")
    measured = results.measured_points()
    bench_hw = hardware_key(results.bench.hardware if results.bench else None)
    if measured and bench_hw != hw:
        notes.append(f"the bench ran on {bench_hw}, not {hw}: its measurements are reported, costs here are predicted")
    elif any(p.scale != 1.0 for p in measured):
        notes.append("bench runs with shrunk use cases (scale != 1) do not measure the deployment's workload "
                     "and are not used for its cost")
    entries = [(BASELINE, "bf16", "BF16")] + [
        (v.name, v.format.lower(), v.label or v.format.upper()) for v in results.variants]
    cands = [candidate(n, f, lab, results, dep, hw, predicted) for n, f, lab in entries]
    front = set(pareto_front(cands))
    cands = [replace(c, on_front=c.name in front) for c in cands]
    chosen = None
    for c in cands:
        if c.feasible and (chosen is None or better(c, chosen)):
            chosen = c
    dep_out = {**dep, "hardware": hw}
    return Recommendation(dep_out, chosen.name if chosen else None, tuple(cands), tuple(pareto_front(cands)),
                          explain(chosen, cands, dep_out), tuple(notes), tuple(ranking(cands)))
