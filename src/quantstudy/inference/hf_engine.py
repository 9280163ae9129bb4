"""The in-process engine: lm-eval's `hf` numbers on any transformers causal LM, computed
with far fewer model tokens; greedy generation with stop strings; window log-probabilities.

Tokenization copies lm-eval 0.4.13's HFLM exactly (`_encode_pair`, `tok_encode`, the empty
context and left-truncation rules), so every request is scored on the same token ids. What
differs is how much work the model does (`hf_packing`): requests sharing an input collapse,
overlapping prefixes run once, segments are packed into short bins under a block mask, a
large cluster (an MMLU subject) runs its prefix once into a KV cache, and `logits_to_keep`
keeps the LM head and log-softmax off context positions (lm-eval computes full-vocabulary
logits for every input token).

The packed masks are custom 4D masks, which transformers passes through to `sdpa` and
`eager` attention (its defaults); flash-attention kernels cannot take them and are refused.

The result equals lm-eval's up to float rounding from different matmul shapes (~1e-5 in
float32). Log-softmax runs in float32 whatever the model dtype: lm-eval keeps the model's
dtype there, which in bf16 rounds each log-prob to ~3 significant digits.

The model may be a float model or a fake-quant one (`fake_quant`): the engine does not care.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import DynamicCache

from quantstudy.inference.hf_packing import Segment, batch_layout, build_clusters, build_rows, first_fit
from quantstudy.inference.lmeval_tokens import LmEvalTokens
from quantstudy.inference.requests import GenerateRequest, Generation, Loglik, LoglikRequest, WindowScores

_TOKENIZER_INFINITY = 1000000000000000019884624838656  # transformers' "no limit" marker
_DEFAULT_MAX_LENGTH = 2048  # lm-eval's fallback when neither config nor tokenizer says


def resolve_max_length(model, tokenizer) -> int:
    """The context length lm-eval's HFLM would use: config, then tokenizer, then 2048."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if value is not None:
            return int(value)
    limit = getattr(tokenizer, "model_max_length", None)
    if limit is not None and limit != _TOKENIZER_INFINITY:
        return int(limit)
    return _DEFAULT_MAX_LENGTH


def teacher_forced_logprobs(model, windows: torch.Tensor, batch_size: int = 8, device=None) -> Iterator[torch.Tensor]:
    """float32 next-token log-probabilities [B, T-1, vocab] of `model` (anything whose call on
    token ids returns `.logits`) over windows [N, T], `batch_size` windows at a time."""
    with torch.inference_mode():
        for start in range(0, len(windows), batch_size):
            batch = windows[start:start + batch_size]
            yield F.log_softmax(model(batch if device is None else batch.to(device)).logits[:, :-1].float(), dim=-1)


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """One token from softmax(logits / temperature), restricted to the smallest set of most
    likely tokens whose mass reaches `top_p` (nucleus sampling)."""
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = (sorted_p.cumsum(-1) - sorted_p) < top_p   # always keeps the most likely token
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


class HFEngine:
    """Scores lm-eval style requests on any Hugging Face causal LM (float, fake-quant, ...).

    Log-likelihood: bins of about `max_tokens` tokens (a longer single input gets its own),
    `batch_size` bins per forward. Generation: `batch_size` prompts decoded together.
    """

    def __init__(self, model, tokenizer, batch_size: int = 16, max_length: int | None = None,
                 progress: bool = True, max_tokens: int = 512):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = max(1, int(batch_size))
        self.max_tokens = max(1, int(max_tokens))
        self.max_length = int(max_length) if max_length else resolve_max_length(model, tokenizer)
        self.progress = progress
        self.device = next(model.parameters()).device
        self.dtype = getattr(model, "dtype", torch.float32)  # of the attention masks we build
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        self.tokens = LmEvalTokens(tokenizer, tuple(gen_eos if isinstance(gen_eos, (list, tuple))
                                                    else [gen_eos] if gen_eos is not None else []))
        self.prefix_token_id = self.tokens.prefix_token_id
        self.eot_token_id = self.tokens.eot_token_id
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.eot_token_id or 0)  # never attended to
        self._keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        attn = getattr(getattr(model, "config", None), "_attn_implementation", None) or "sdpa"
        if "flash" in attn:
            raise ValueError(f"HFEngine packs sequences with 4D attention masks; load the model with "
                             f"attn_implementation='sdpa' or 'eager', not {attn!r}")

    def encode_pairs(self, requests: list[LoglikRequest]) -> list[tuple[list[int], list[int]]]:
        """(context ids, continuation ids) per request, as lm-eval's `loglikelihood` makes them."""
        return self.tokens.encode_pairs(requests)

    # ---- log-likelihood ------------------------------------------------------------------

    def loglikelihood(self, requests: list[LoglikRequest]) -> list[Loglik]:
        results: list[Loglik | None] = [None] * len(requests)
        if not requests:
            return []
        clusters = build_clusters(build_rows(self.encode_pairs(requests), self.max_length))
        bar = tqdm(total=len(requests), desc="loglikelihood", disable=not self.progress, file=sys.stderr)
        with torch.inference_mode():
            small = [c.segments() for c in clusters if c.size() <= self.max_tokens]
            self._run_bins(first_fit(small, self.max_tokens), None, results, bar)
            for c in (c for c in clusters if c.size() > self.max_tokens):
                # A large cluster (an MMLU subject: the 5-shot prompt and many questions): its
                # prefix runs once into a KV cache, its rows run in bins against it.
                cache_kv = self._prefix_cache(c.prefix) if c.prefix else None
                p = len(c.prefix)
                rows = [[Segment(r.tokens[p:], p, None, r)] for r in c.rows]
                self._run_bins(first_fit(rows, self.max_tokens), cache_kv, results, bar)
        bar.close()
        return results  # type: ignore[return-value]

    def _prefix_cache(self, prefix: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        pos = torch.arange(len(prefix))[None]
        out = self._forward(torch.tensor([prefix]), None, pos, DynamicCache(config=self.model.config), keep=1)
        return [(layer.keys, layer.values) for layer in out.past_key_values.layers]

    def _run_bins(self, bins: list[list[Segment]], cache_kv, results: list, bar) -> None:
        """Bins of similar length, `batch_size` per forward."""
        bins = sorted(bins, key=lambda b: -sum(len(s.tokens) for s in b))
        for i in range(0, len(bins), self.batch_size):
            self._run_batch(bins[i:i + self.batch_size], cache_kv, results, bar)

    def _run_batch(self, bins: list[list[Segment]], cache_kv, results: list, bar) -> None:
        """One forward over a batch of bins (`hf_packing.batch_layout`), then each request's
        continuation read off the logits of its row."""
        n_cache = 0 if cache_kv is None else cache_kv[0][0].shape[-2]
        lay = batch_layout(bins, n_cache, self.pad_id, self.dtype)
        cache = None
        if cache_kv is not None:  # one prefix shared by every bin: a fresh cache, expanded
            cache = DynamicCache([(k.expand(len(bins), -1, -1, -1), v.expand(len(bins), -1, -1, -1))
                                  for k, v in cache_kv], config=self.model.config)
        logits = self._forward(lay.ids, lay.mask, lay.positions, cache, keep=lay.keep).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        greedy = logprobs.argmax(dim=-1)
        for b, (segs, n_scored) in enumerate(zip(bins, lay.scored)):
            at = lay.keep - n_scored  # the bin's scored tokens: segment by segment, in order
            for seg in segs:
                if seg.row is None:
                    continue
                at += len(seg.tokens) - (seg.row.start - seg.start)
                for i, cont in seg.row.reads:  # a continuation's tokens end where its row ends
                    target = torch.tensor(cont, device=self.device)
                    lp = logprobs[b, at - len(cont):at].gather(-1, target[:, None]).squeeze(-1)
                    ok = bool((greedy[b, at - len(cont):at] == target).all())
                    results[i] = Loglik(float(lp.sum()), ok, len(cont))
                    bar.update(1)

    def _forward(self, ids, mask, pos, cache, keep):
        """One model call; `keep` (the last N positions) limits the logits."""
        kwargs = {"logits_to_keep": keep} if self._keep else {}
        mask = None if mask is None else mask.to(self.device)
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask,
                         position_ids=pos.to(self.device), past_key_values=cache, use_cache=cache is not None,
                         **kwargs)
        if not self._keep:  # a model without logits_to_keep: select here
            out.logits = out.logits[:, -keep:]
        return out

    # ---- window log-probabilities --------------------------------------------------------

    def window_scores(self, windows: torch.Tensor, batch_size: int = 8) -> Iterator[WindowScores]:
        """Per batch of `batch_size` windows [B, T] (teacher forcing, no padding): the whole
        float32 next-token distribution and what derives from it (`WindowScores.from_full`)."""
        for start, logp in zip(range(0, len(windows), batch_size),
                               teacher_forced_logprobs(self.model, windows, batch_size, self.device)):
            yield WindowScores.from_full(windows[start:start + batch_size], logp)

    # ---- generation ----------------------------------------------------------------------

    def generate(self, requests: list[GenerateRequest]) -> list[Generation]:
        """Decoding with a KV cache (greedy, or sampled per request), batched with left padding, longest prompt first.
        Stops per row at EOS, at `max_new_tokens`, or once the decoded text holds a stop
        string; the text is cut at the earliest stop string, as lm-eval does."""
        results: list[Generation | None] = [None] * len(requests)
        if not requests:
            return []
        enc = self.tokens.encode_prompts([r.prompt for r in requests])
        order = sorted(range(len(requests)), key=lambda i: -len(enc[i]))
        eos = self.tokens.eos_ids
        bar = tqdm(total=len(requests), desc="generate", disable=not self.progress, file=sys.stderr)
        with torch.inference_mode():
            for s in range(0, len(order), self.batch_size):
                batch = order[s:s + self.batch_size]
                for i, gen in zip(batch, self._generate_batch([requests[i] for i in batch], [enc[i] for i in batch], eos)):
                    results[i] = gen
                    bar.update(1)
        bar.close()
        return results  # type: ignore[return-value]

    def _generate_batch(self, reqs: list[GenerateRequest], prompts: list[list[int]], eos: set) -> list[Generation]:
        limits = [r.max_new_tokens for r in reqs]
        # lm-eval left-truncates prompts to leave room for the generated tokens.
        prompts = [p[-max(1, self.max_length - m):] for p, m in zip(prompts, limits)]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(reqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(reqs), width), dtype=torch.long)
        for b, p in enumerate(prompts):
            ids[b, width - len(p):] = torch.tensor(p)
            mask[b, width - len(p):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out_tokens: list[list[int]] = [[] for _ in reqs]
        done = [m <= 0 for m in limits]
        cache = DynamicCache(config=self.model.config)
        # sampled rows draw from their own generator, so a row's text depends on its seed only
        samplers = [torch.Generator().manual_seed(r.seed or 0) if r.temperature > 0 else None for r in reqs]
        step_ids = ids
        while not all(done):
            out = self._forward(step_ids, mask, pos, cache, keep=1)
            cache = out.past_key_values
            nxt = out.logits[:, -1].argmax(dim=-1).cpu()
            for b, gen in enumerate(samplers):
                if gen is not None and not done[b]:
                    nxt[b] = sample_token(out.logits[b, -1].float().cpu(), reqs[b].temperature, reqs[b].top_p, gen)
            for b, tok in enumerate(nxt.tolist()):
                if done[b]:
                    continue
                if tok in eos:
                    done[b] = True
                    continue
                out_tokens[b].append(tok)
                if len(out_tokens[b]) >= limits[b] or self.tokens.hit_stop(out_tokens[b], reqs[b].stop):
                    done[b] = True
            step_ids = nxt[:, None]
            mask = torch.cat([mask, torch.ones((len(reqs), 1), dtype=torch.long)], dim=1)
            pos = pos[:, -1:] + 1
        return [self.tokens.finish(toks, r.stop) for toks, r in zip(out_tokens, reqs)]
