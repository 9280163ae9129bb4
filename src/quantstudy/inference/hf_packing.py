"""How the in-process engine packs log-likelihood requests into few, short forward passes.

A request's input is `(context + continuation)[:-1]`; every token before its first scored
position can be computed once and shared. Requests with the same input collapse to one
`Row` (MMLU's one-token answers " A".." D"); rows whose prefixes overlap are clustered
around their common prefix (`Cluster`: all options of one question; all questions of an
MMLU subject, which share the 5-shot prompt; Winogrande's two fillings). Segments are
packed into bins of about `max_tokens` tokens under a block attention mask (each row sees
its cluster's prefix and itself, causally; position ids per segment). Bins stay short
because masked attention still costs the full bin length squared.

Pure bookkeeping over token ids: no model here. `hf_engine.HFEngine` runs the bins.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def lcp(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class Row:
    """One distinct model input; every request whose input it is reads its logits."""

    tokens: list[int]
    start: int  # first position whose logits a request needs; tokens before it are shareable
    reads: list[tuple[int, list[int]]] = field(default_factory=list)  # (request index, continuation)


@dataclass
class Segment:
    """A run of tokens in a packed forward: `tokens` sit at absolute positions `start`...;
    `parent` indexes the segment (in the same pass) they may see entirely; `row` is set for
    scored rows, None for prefixes."""

    tokens: list[int]
    start: int
    parent: int | None
    row: Row | None


@dataclass
class Cluster:
    """Rows sharing `prefix`: the prefix runs once, each row runs only `tokens[len(prefix):]`."""

    prefix: list[int]
    rows: list[Row]

    def size(self) -> int:
        return len(self.prefix) + sum(len(r.tokens) - len(self.prefix) for r in self.rows)

    def segments(self) -> list[Segment]:
        """The prefix segment (if any) then one segment per row, pointing at it."""
        p = len(self.prefix)
        head = [Segment(self.prefix, 0, None, None)] if p else []
        return head + [Segment(r.tokens[p:], p, 0 if p else None, r) for r in self.rows]


def build_rows(pairs: list[tuple[list[int], list[int]]], max_length: int) -> list[Row]:
    """One row per distinct model input, lm-eval's truncation applied."""
    rows: dict[tuple[int, ...], Row] = {}
    for i, (ctx, cont) in enumerate(pairs):
        if not ctx or not cont:
            raise ValueError(f"request {i}: empty context or continuation after tokenization")
        if len(cont) > max_length:
            raise ValueError(f"request {i}: continuation of {len(cont)} tokens exceeds max_length")
        # lm-eval: keep the last max_length + 1 tokens, drop the final one (never an input).
        inp = (ctx + cont)[-(max_length + 1):][:-1]
        start = len(inp) - len(cont)
        row = rows.setdefault(tuple(inp), Row(inp, start))
        row.start = min(row.start, start)
        row.reads.append((i, cont))
    return list(rows.values())


def build_clusters(rows: list[Row]) -> list[Cluster]:
    """Group rows around common prefixes. Sorted by tokens, rows sharing a prefix are
    adjacent; a row joins the current cluster when the tokens it saves (the common prefix,
    computed once instead of again) outweigh what shortening the prefix costs the rows
    already in it."""
    clusters: list[Cluster] = []
    for row in sorted(rows, key=lambda r: r.tokens):
        share = row.tokens[:row.start]
        if clusters:
            cur = clusters[-1]
            n = lcp(cur.prefix, share)
            if n > 0 and (len(cur.prefix) - n) * len(cur.rows) < n:
                cur.prefix = cur.prefix[:n]
                cur.rows.append(row)
                continue
        clusters.append(Cluster(share, [row]))
    return clusters


def first_fit(items: list[list[Segment]], capacity: int) -> list[list[Segment]]:
    """Pack segment groups (a cluster's prefix and rows, or a single row) into bins of about
    `capacity` tokens, largest first, each into the first bin with room (first-fit
    decreasing); an oversized group gets a bin of its own. Parents are re-indexed per bin."""
    bins: list[list[Segment]] = []
    room: list[int] = []
    for group in sorted(items, key=lambda g: -sum(len(s.tokens) for s in g)):
        size = sum(len(s.tokens) for s in group)
        k = next((i for i, r in enumerate(room) if r >= size), None)
        if k is None:
            bins.append([])
            room.append(capacity)
            k = len(bins) - 1
        base = len(bins[k])
        bins[k] += [Segment(s.tokens, s.start, None if s.parent is None else base + s.parent, s.row) for s in group]
        room[k] -= size
    return bins


@dataclass
class BatchLayout:
    """One forward over a batch of bins: its inputs, and where each bin's scored tokens are."""

    ids: torch.Tensor        # [B, width]
    positions: torch.Tensor  # [B, width]
    mask: torch.Tensor       # [B, 1, width, n_cache + width], additive, in the model dtype
    keep: int                # logits to keep: the most scored tokens of any bin
    scored: list[int]        # per bin, how many of its tokens are scored (they come last)


def batch_layout(bins: list[list[Segment]], n_cache: int, pad_id: int, dtype: torch.dtype) -> BatchLayout:
    """In a bin, a token sees the earlier tokens of its own segment, all of its parent
    segment and all of a shared prefix cache of `n_cache` tokens; the 4D mask and the
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
    ids = torch.full((len(bins), width), pad_id, dtype=torch.long)
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
    mask = torch.full(allowed.shape, torch.finfo(dtype).min, dtype=dtype).masked_fill_(allowed, 0)
    return BatchLayout(ids, pos, mask[:, None], keep, [n for _, _, n in layouts])
