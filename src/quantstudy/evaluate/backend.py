"""Our scoring backend: lm-eval's `hf` numbers, computed with far fewer model tokens.

Tokenization copies lm-eval 0.4.13's HFLM exactly (`_encode_pair`, `tok_encode`, the empty
context and left-truncation rules), so every request is scored on the same token ids. What
differs is how much work the model does:

* **Prefix sharing.** A request's input is `(context + continuation)[:-1]`; every token before
  its first scored position can be computed once and shared. Requests with the same input
  collapse to one row (MMLU's one-token answers " A".." D"); rows whose prefixes overlap are
  clustered around their common prefix (all options of one question; all questions of an
  MMLU subject, which share the 5-shot prompt; Winogrande's two fillings).
* **Packing.** Segments are packed into bins of about `max_tokens` tokens under a block
  attention mask (each row sees its cluster's prefix and itself, causally; position ids per
  segment), `batch_size` bins per forward. Small clusters go whole into bins (first-fit
  decreasing, so little padding); a large one (an MMLU subject) runs its prefix once into a
  KV cache and its rows in bins against it. Bins stay short because masked attention still
  costs the full bin length squared.
* **Logits only where scored.** `logits_to_keep` keeps the LM head and log-softmax off
  context positions (lm-eval computes full-vocabulary logits for every input token).

The packed masks are custom 4D masks, which transformers passes through to `sdpa` and
`eager` attention (its defaults); flash-attention kernels cannot take them and are refused.

The result equals lm-eval's up to float rounding from different matmul shapes (~1e-5 in
float32). Log-softmax runs in float32 whatever the model dtype: lm-eval keeps the model's
dtype there, which in bf16 rounds each log-prob to ~3 significant digits.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from quantstudy.evaluate.records import GenerateRequest, Generation, Loglik, LoglikRequest

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


def _lcp(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _first_fit(items: list[list[_Segment]], capacity: int) -> list[list[_Segment]]:
    """Pack segment groups (a cluster's prefix and rows, or a single row) into bins of about
    `capacity` tokens, largest first, each into the first bin with room (first-fit
    decreasing); an oversized group gets a bin of its own. Parents are re-indexed per bin."""
    bins: list[list[_Segment]] = []
    room: list[int] = []
    for group in sorted(items, key=lambda g: -sum(len(s.tokens) for s in g)):
        size = sum(len(s.tokens) for s in group)
        k = next((i for i, r in enumerate(room) if r >= size), None)
        if k is None:
            bins.append([])
            room.append(capacity)
            k = len(bins) - 1
        base = len(bins[k])
        bins[k] += [_Segment(s.tokens, s.start, None if s.parent is None else base + s.parent, s.row) for s in group]
        room[k] -= size
    return bins


@dataclass
class _Row:
    """One distinct model input; every request whose input it is reads its logits."""

    tokens: list[int]
    start: int  # first position whose logits a request needs; tokens before it are shareable
    reads: list[tuple[int, list[int]]] = field(default_factory=list)  # (request index, continuation)


@dataclass
class _Cluster:
    """Rows sharing `prefix`: the prefix runs once, each row runs only `tokens[len(prefix):]`."""

    prefix: list[int]
    rows: list[_Row]

    def size(self) -> int:
        return len(self.prefix) + sum(len(r.tokens) - len(self.prefix) for r in self.rows)

    def segments(self) -> list[_Segment]:
        """The prefix segment (if any) then one segment per row, pointing at it."""
        p = len(self.prefix)
        head = [_Segment(self.prefix, 0, None, None)] if p else []
        return head + [_Segment(r.tokens[p:], p, 0 if p else None, r) for r in self.rows]


@dataclass
class _Segment:
    """A run of tokens in a packed forward: `tokens` sit at absolute positions `start`...;
    `parent` indexes the segment (in the same pass) they may see entirely; `row` is set for
    scored rows, None for prefixes."""

    tokens: list[int]
    start: int
    parent: int | None
    row: _Row | None


class HFBackend:
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
        # HFLM: prefix = BOS if the tokenizer has one, else EOS; EOT = EOS.
        bos = tokenizer.bos_token_id
        self.prefix_token_id = bos if bos is not None else tokenizer.eos_token_id
        self.eot_token_id = tokenizer.eos_token_id
        self._prefix_text = tokenizer.decode(self.prefix_token_id)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.eot_token_id or 0)  # never attended to
        self._keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        attn = getattr(getattr(model, "config", None), "_attn_implementation", None) or "sdpa"
        if "flash" in attn:
            raise ValueError(f"HFBackend packs sequences with 4D attention masks; load the model with "
                             f"attn_implementation='sdpa' or 'eager', not {attn!r}")

    # ---- tokenization (lm-eval HFLM semantics) -------------------------------------------

    def _encode(self, texts: list[str]) -> list[list[int]]:
        """HFLM.tok_encode: tokenizer defaults, except no special tokens when the text already
        starts with the prefix (BOS) token's text. Batched: the fast tokenizer's batch call
        returns the same ids as one call per text."""
        out: list[list[int]] = [[] for _ in texts]
        for skip in (False, True):
            idx = [i for i, t in enumerate(texts) if t.startswith(self._prefix_text) == skip]
            if idx:
                kwargs = {"add_special_tokens": False} if skip else {}
                enc = self.tokenizer([texts[i] for i in idx], **kwargs)["input_ids"]
                for i, ids in zip(idx, enc):
                    out[i] = list(ids)
        return out

    def encode_pairs(self, requests: list[LoglikRequest]) -> list[tuple[list[int], list[int]]]:
        """(context ids, continuation ids) per request, as lm-eval's `loglikelihood` makes them."""
        pairs: list[tuple[list[int], list[int]] | None] = [None] * len(requests)
        ctx_texts, whole_texts, pending = [], [], []
        for i, r in enumerate(requests):
            if r.context == "":
                cont = self.tokenizer(r.continuation, add_special_tokens=False)["input_ids"]
                if cont and cont[0] == self.prefix_token_id:
                    pairs[i] = (cont[:1], cont[1:])
                else:  # the BOS (or EOS) token stands in for the missing context
                    pairs[i] = ([self.prefix_token_id], cont)
                continue
            # Trailing whitespace of the context belongs to the continuation (word boundaries).
            context, continuation = r.context, r.continuation
            n_spaces = len(context) - len(context.rstrip())
            if n_spaces:
                continuation = context[-n_spaces:] + continuation
                context = context[:-n_spaces]
            ctx_texts.append(context)
            whole_texts.append(context + continuation)
            pending.append(i)
        unique = list(dict.fromkeys(ctx_texts))  # MC requests repeat their context
        ctx_ids = dict(zip(unique, self._encode(unique)))
        for i, ctx, whole in zip(pending, ctx_texts, self._encode(whole_texts)):
            c = ctx_ids[ctx]
            pairs[i] = (c, whole[len(c):])
        return pairs  # type: ignore[return-value]

    # ---- log-likelihood ------------------------------------------------------------------

    def loglikelihood(self, requests: list[LoglikRequest]) -> list[Loglik]:
        results: list[Loglik | None] = [None] * len(requests)
        if not requests:
            return []
        clusters = self._clusters(self._rows(self.encode_pairs(requests)))
        bar = tqdm(total=len(requests), desc="loglikelihood", disable=not self.progress, file=sys.stderr)
        with torch.inference_mode():
            small = [c.segments() for c in clusters if c.size() <= self.max_tokens]
            self._run_bins(_first_fit(small, self.max_tokens), None, results, bar)
            for c in (c for c in clusters if c.size() > self.max_tokens):
                # A large cluster (an MMLU subject: the 5-shot prompt and many questions): its
                # prefix runs once into a KV cache, its rows run in bins against it.
                cache_kv = self._prefix_cache(c.prefix) if c.prefix else None
                p = len(c.prefix)
                rows = [[_Segment(r.tokens[p:], p, None, r)] for r in c.rows]
                self._run_bins(_first_fit(rows, self.max_tokens), cache_kv, results, bar)
        bar.close()
        return results  # type: ignore[return-value]

    def _rows(self, pairs: list[tuple[list[int], list[int]]]) -> list[_Row]:
        rows: dict[tuple[int, ...], _Row] = {}
        for i, (ctx, cont) in enumerate(pairs):
            if not ctx or not cont:
                raise ValueError(f"request {i}: empty context or continuation after tokenization")
            if len(cont) > self.max_length:
                raise ValueError(f"request {i}: continuation of {len(cont)} tokens exceeds max_length")
            # lm-eval: keep the last max_length + 1 tokens, drop the final one (never an input).
            inp = (ctx + cont)[-(self.max_length + 1):][:-1]
            start = len(inp) - len(cont)
            row = rows.setdefault(tuple(inp), _Row(inp, start))
            row.start = min(row.start, start)
            row.reads.append((i, cont))
        return list(rows.values())

    def _clusters(self, rows: list[_Row]) -> list[_Cluster]:
        """Group rows around common prefixes. Sorted by tokens, rows sharing a prefix are
        adjacent; a row joins the current cluster when the tokens it saves (the common prefix,
        computed once instead of again) outweigh what shortening the prefix costs the rows
        already in it."""
        clusters: list[_Cluster] = []
        for row in sorted(rows, key=lambda r: r.tokens):
            share = row.tokens[:row.start]
            if clusters:
                cur = clusters[-1]
                n = _lcp(cur.prefix, share)
                if n > 0 and (len(cur.prefix) - n) * len(cur.rows) < n:
                    cur.prefix = cur.prefix[:n]
                    cur.rows.append(row)
                    continue
            clusters.append(_Cluster(share, [row]))
        return clusters

    def _prefix_cache(self, prefix: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        pos = torch.arange(len(prefix))[None]
        out = self._forward(torch.tensor([prefix]), None, pos, DynamicCache(config=self.model.config), keep=1)
        return [(layer.keys, layer.values) for layer in out.past_key_values.layers]

    def _run_bins(self, bins: list[list[_Segment]], cache_kv, results: list, bar) -> None:
        """Bins of similar length, `batch_size` per forward."""
        bins = sorted(bins, key=lambda b: -sum(len(s.tokens) for s in b))
        for i in range(0, len(bins), self.batch_size):
            self._run_batch(bins[i:i + self.batch_size], cache_kv, results, bar)

    def _run_batch(self, bins: list[list[_Segment]], cache_kv, results: list, bar) -> None:
        """One forward over a batch of bins. In a bin, a token sees the earlier tokens of its
        own segment, all of its parent segment and all of `cache_kv`; the 4D mask and the
        position ids say so, which frees the physical order: each bin puts its scored tokens
        last, behind left padding, so `logits_to_keep=K` returns exactly the positions scored."""
        layouts = []
        for segs in bins:
            toks = [(seg.row is not None and j >= seg.row.start - seg.start, k, j, t, seg.start + j)
                    for k, seg in enumerate(segs) for j, t in enumerate(seg.tokens)]
            toks.sort(key=lambda x: x[0])  # stable: unscored first, scored after, each in order
            parents = [-1 if s.parent is None else s.parent for s in segs]
            layouts.append((toks, parents, sum(x[0] for x in toks)))
        width = max(len(t) for t, _, _ in layouts)
        keep = max(n for _, _, n in layouts)
        n_cache = 0 if cache_kv is None else cache_kv[0][0].shape[-2]
        ids = torch.full((len(bins), width), self.pad_id, dtype=torch.long)
        pos = torch.zeros((len(bins), width), dtype=torch.long)
        allowed = torch.zeros((len(bins), width, n_cache + width), dtype=torch.bool)
        for b, (toks, parents, _) in enumerate(layouts):
            pad = width - len(toks)
            ids[b, pad:] = torch.tensor([x[3] for x in toks])
            pos[b, pad:] = torch.tensor([x[4] for x in toks])
            seg, local = torch.tensor([x[1] for x in toks]), torch.tensor([x[2] for x in toks])
            parent = torch.tensor(parents)[seg]
            allowed[b, pad:, n_cache + pad:] = ((seg[:, None] == seg[None, :]) & (local[None, :] <= local[:, None])) \
                | (parent[:, None] == seg[None, :])
            allowed[b, pad:, :n_cache] = True
            allowed[b, :pad, n_cache:n_cache + pad] = torch.eye(pad, dtype=torch.bool)  # pads: only themselves
        # Additive mask in the model dtype (not bool, not -inf): SDPA and eager attention both
        # accept it, and every query sees at least itself, so no row is all-masked.
        mask = torch.full(allowed.shape, torch.finfo(self.dtype).min, dtype=self.dtype).masked_fill_(allowed, 0)
        cache = None
        if cache_kv is not None:  # one prefix shared by every bin: a fresh cache, expanded
            cache = DynamicCache([(k.expand(len(bins), -1, -1, -1), v.expand(len(bins), -1, -1, -1))
                                  for k, v in cache_kv], config=self.model.config)
        logits = self._forward(ids, mask[:, None], pos, cache, keep=keep).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        greedy = logprobs.argmax(dim=-1)
        for b, (segs, (_, _, n_scored)) in enumerate(zip(bins, layouts)):
            at = keep - n_scored  # the bin's scored tokens: segment by segment, in order
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

    # ---- generation ----------------------------------------------------------------------

    def generate(self, requests: list[GenerateRequest]) -> list[Generation]:
        """Greedy decoding with a KV cache, batched with left padding, longest prompt first.
        Stops per row at EOS, at `max_new_tokens`, or once the decoded text holds a stop
        string; the text is cut at the earliest stop string, as lm-eval does."""
        results: list[Generation | None] = [None] * len(requests)
        if not requests:
            return []
        prompts = [r.prompt for r in requests]
        # HFLM.tok_batch_encode: no special tokens if the first prompt starts with BOS text.
        bos = self.tokenizer.bos_token
        skip = bos is not None and prompts[0].startswith(bos)
        enc = self.tokenizer(prompts, **({"add_special_tokens": False} if skip else {}))["input_ids"]
        order = sorted(range(len(requests)), key=lambda i: -len(enc[i]))
        eos = {self.eot_token_id}
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        eos.update(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos] if gen_eos is not None else [])
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
        step_ids = ids
        while not all(done):
            out = self._forward(step_ids, mask, pos, cache, keep=1)
            cache = out.past_key_values
            nxt = out.logits[:, -1].argmax(dim=-1).cpu()
            for b, tok in enumerate(nxt.tolist()):
                if done[b]:
                    continue
                if tok in eos:
                    done[b] = True
                    continue
                out_tokens[b].append(tok)
                if len(out_tokens[b]) >= limits[b] or self._hit_stop(out_tokens[b], reqs[b].stop):
                    done[b] = True
            step_ids = nxt[:, None]
            mask = torch.cat([mask, torch.ones((len(reqs), 1), dtype=torch.long)], dim=1)
            pos = pos[:, -1:] + 1
        return [self._finish(toks, r.stop) for toks, r in zip(out_tokens, reqs)]

    def _hit_stop(self, tokens: list[int], stop: tuple[str, ...]) -> bool:
        if not stop:
            return False
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return any(s and s in text for s in stop)

    def _finish(self, tokens: list[int], stop: tuple[str, ...]) -> Generation:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        cut = min((text.find(s) for s in stop if s and s in text), default=-1)
        if cut < 0:
            return Generation(text, len(tokens))
        text = text[:cut]
        n = len(tokens)  # tokens whose decoded text lies entirely before the cut
        while n > 0 and len(self.tokenizer.decode(tokens[:n], skip_special_tokens=True)) > cut:
            n -= 1
        return Generation(text, n)
