"""How closely one engine's model follows another's on the same tokens: the gap between a
served model and its in-process twin, and the noise floor of the engine itself.

Following NVIDIA ModelOpt's fidelity check: a set of prompts (the compare stage's, with the
chat template) is continued greedily by the in-process baseline; each prompt + continuation
is then teacher-forced through both models, and per position we take KL(reference || other),
whether their top-1 tokens agree and the difference of the actual token's negative
log-likelihood (ΔNLL, other minus reference) -- the prompt's positions (prefill) and the
continuation's (decode) reported apart, each as a mean over sequences with a bootstrap
interval.

A served model is scored while its server runs and its top-k scores are kept in the store
(`stored_scores_items`), so the comparison with its in-process twin -- or with a second
served run -- happens later without the server. KL against a top-k side is the coarsened
lower bound of `perplexity.divergence`.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np
import torch

from quantstudy import bootstrap
from quantstudy.inference.requests import GenerateRequest, WindowScores
from quantstudy.items import ItemResult

REFERENCE_TASK = "fidelity-reference"   # the sequences (baseline's prompts + continuations)
SCORES_TASK = "fidelity-scores"         # a served model's top-k over them
N_SEQUENCES = 16
MAX_NEW_TOKENS = 48
METRICS = ("kl", "top1", "dnll")


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()


def _unb64(text: str, dtype, shape) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype=dtype).reshape(shape).copy())


def encode_scores(scores: WindowScores, row: int) -> dict:
    """One row of `scores` as a JSON-able dict (float32 log-probabilities, int32 ids)."""
    ids = scores.top_ids[row].cpu().numpy().astype(np.int32)
    return {"shape": list(ids.shape), "target": _b64(scores.target[row].cpu().float().numpy()),
            "ids": _b64(ids), "logprobs": _b64(scores.top_logprobs[row].cpu().float().numpy())}


def decode_scores(extra: dict) -> WindowScores:
    """A stored row back as a one-row WindowScores (no full distribution)."""
    t, k = extra["shape"]
    return WindowScores(_unb64(extra["target"], np.float32, (1, t)), _unb64(extra["ids"], np.int32, (1, t, k)).long(),
                        _unb64(extra["logprobs"], np.float32, (1, t, k)))


# ---- the sequences ---------------------------------------------------------------------------

def reference_items(engine, tokenizer, prompts, max_new_tokens: int = MAX_NEW_TOKENS) -> list[ItemResult]:
    """The baseline's greedy continuations of `prompts` (chat template applied), one item each:
    `extra` holds the prompt's and the continuation's token ids."""
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p.prompt}], tokenize=False,
                                           add_generation_prompt=True) for p in prompts]
    gens = engine.generate([GenerateRequest(t, max_new_tokens) for t in texts])
    prompt_ids = engine.tokens.encode_prompts(texts)
    return [ItemResult(REFERENCE_TASK, p.id, g.text, True, 1.0, tokens=len(g.tokens or ()),
                       extra={"prompt": ids, "continuation": list(g.tokens or ())})
            for p, g, ids in zip(prompts, gens, prompt_ids)]


def sequences(reference: list[ItemResult]) -> list[tuple[str, torch.Tensor, int]]:
    """(id, prompt + continuation ids [1, T], prompt length) per reference item."""
    out = []
    for r in reference:
        ids = r.extra["prompt"] + r.extra["continuation"]
        if len(ids) >= 2:
            out.append((r.item_id, torch.tensor([ids]), len(r.extra["prompt"])))
    return out


def stored_scores_items(engine, seqs, task: str = SCORES_TASK) -> list[ItemResult]:
    """A (served) engine's top-k scores over each sequence, kept for later comparisons."""
    out = []
    for seq_id, ids, _ in seqs:
        scores = next(iter(engine.window_scores(ids, 1)))
        out.append(ItemResult(task, seq_id, "", True, 1.0, tokens=ids.shape[1] - 1, extra=encode_scores(scores, 0)))
    return out


# ---- the comparison --------------------------------------------------------------------------

def pair_metrics(reference: WindowScores, other: WindowScores, ids: torch.Tensor, prompt_len: int) -> dict:
    """Per-sequence means of KL, top-1 agreement and ΔNLL over prefill and decode positions.
    Position j predicts token j + 1: prefill positions predict prompt tokens, decode ones
    the continuation."""
    from quantstudy.evaluate.perplexity import divergence

    kl, agree = divergence(reference, other, ids)
    dnll = reference.target - other.target
    split = max(0, prompt_len - 1)
    out = {}
    for part, sl in (("prefill", slice(0, split)), ("decode", slice(split, None))):
        n = kl[0, sl].numel()
        out[part] = None if n == 0 else {"kl": float(kl[0, sl].clamp(min=0).mean()),
                                         "top1": float(agree[0, sl].mean()), "dnll": float(dnll[0, sl].mean()),
                                         "positions": n}
    return out


def pair_items(reference_engine_or_scores, other_scores: dict[str, WindowScores], seqs, task: str) -> list[ItemResult]:
    """One item per sequence comparing a reference (an engine scored now, or stored scores by
    sequence id) with stored scores of the other side."""
    out = []
    for seq_id, ids, prompt_len in seqs:
        if seq_id not in other_scores:
            continue
        ref = reference_engine_or_scores
        ref = ref[seq_id] if isinstance(ref, dict) else next(iter(ref.window_scores(ids, 1)))
        metrics = pair_metrics(ref, other_scores[seq_id], ids, prompt_len)
        out.append(ItemResult(task, seq_id, "", True, 1.0, tokens=ids.shape[1] - 1, extra=metrics))
    return out


@dataclass(frozen=True)
class FidelitySummary:
    """Means over sequences with bootstrap intervals, prefill and decode apart."""

    n: int
    prefill: dict            # metric -> {"mean", "ci"}
    decode: dict


def summarize(items: list[ItemResult], seed: int = 0) -> FidelitySummary | None:
    if not items:
        return None
    parts = {}
    for part in ("prefill", "decode"):
        rows = [r.extra[part] for r in items if r.extra.get(part)]
        stats = {}
        for m in METRICS:
            values = np.array([row[m] for row in rows], dtype=float)
            if len(values) == 0:
                continue
            idx = bootstrap.indices(len(values), bootstrap.N_BOOTSTRAP, seed)
            stats[m] = {"mean": float(values.mean()), "ci": list(bootstrap.interval(values[idx].mean(1)))}
        parts[part] = stats
    return FidelitySummary(len(items), parts["prefill"], parts["decode"])


def flip_rate(a: list[ItemResult], b: list[ItemResult]) -> float | None:
    """Fraction of paired items whose correctness differs between two runs."""
    right = {r.item_id: r.correct for r in b}
    pairs = [(r.correct, right[r.item_id]) for r in a if r.item_id in right]
    return None if not pairs else sum(x != y for x, y in pairs) / len(pairs)
