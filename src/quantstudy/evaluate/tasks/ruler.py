"""Long-context retrieval in the style of RULER's single-needle task (niah_single).

A "needle" sentence with a 7-digit number is placed at a chosen depth inside a haystack of
packaged WikiText, cut to a chosen token length; the model is asked for the number with
RULER's template and answer prefix, and scored by RULER's string match (the number appears
in the generation). Lengths and depths form a grid; every cell has `per_cell` items with
seeded keys, numbers and haystack offsets, so baseline and variants see identical prompts.

Lengths beyond the model's context window are dropped (and said so by `grid`).
"""

from __future__ import annotations

import random

from quantstudy.data.windows import haystack_ids
from quantstudy.items import ItemResult
from quantstudy.inference.requests import GenerateRequest

NAME = "ruler"
# v2: the haystack repeats to the stated length (v1's items at 4096/8192 tokens were only as
# long as the packaged text, ~2.9k SmolLM2 tokens), as RULER repeats its essays
VERSION = "niah_single-v2"
DEFAULT_LENGTHS = (512, 1024, 2048, 4096, 8192)
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
# RULER's niah template (synthetic/constants.py) with its answer prefix.
TEMPLATE = ("Some special magic numbers are hidden within the following text. Make sure to memorize it. "
            "I will quiz you about the numbers afterwards.\n{context}\n"
            "What is the special magic number for {key} mentioned in the provided text?")
ANSWER_PREFIX = " The special magic number for {key} mentioned in the provided text is"
NEEDLE = "One of the special magic numbers for {key} is: {value}."
KEYS = ("amber-falcon", "quiet-harbor", "silver-meadow", "crimson-lantern", "hidden-orchard", "northern-comet",
        "paper-tiger", "velvet-river", "iron-sparrow", "golden-thistle", "broken-compass", "lunar-garden")


def grid(max_context: int, lengths=DEFAULT_LENGTHS, depths=DEFAULT_DEPTHS,
         margin: int = 64) -> tuple[list[int], list[float]]:
    """Lengths that fit the model's context with `margin` tokens of room for the question and answer."""
    return [n for n in lengths if n + margin <= max_context], list(depths)


def build_items(tokenizer, max_context: int, per_cell: int = 2, lengths=DEFAULT_LENGTHS,
                depths=DEFAULT_DEPTHS, seed: int = 0) -> list[dict]:
    """One item per (length, depth, k): its prompt (the haystack measured in tokens) and answer."""
    lengths, depths = grid(max_context, lengths, depths)
    hay = haystack_ids(tokenizer)
    if lengths and len(hay) < max(lengths) * 2:
        hay = hay * (1 + 2 * max(lengths) // len(hay))
    rng = random.Random(seed)
    items = []
    for length in lengths:
        for depth in depths:
            for k in range(per_cell):
                key, value = rng.choice(KEYS), str(rng.randint(1_000_000, 9_999_999))
                start = rng.randrange(0, max(1, len(hay) - length))
                needle = tokenizer(" " + NEEDLE.format(key=key, value=value), add_special_tokens=False)["input_ids"]
                body = hay[start:start + length - len(needle)]
                cut = int(round(depth * len(body)))
                context = tokenizer.decode(body[:cut] + needle + body[cut:])
                items.append({"id": f"{length}-{depth:.2f}-{k}", "length": length, "depth": depth, "k": k,
                              "key": key, "value": value, "context": context})
    # Repetition-major order, so a --limit still spans every length and depth.
    return sorted(items, key=lambda item: item["k"])


def requests(items: list[dict], max_new_tokens: int = 16, apply_chat=None) -> list[GenerateRequest]:
    out = []
    for item in items:
        question = TEMPLATE.format(context=item["context"], key=item["key"])
        answer_prefix = ANSWER_PREFIX.format(key=item["key"])
        # With a chat template the prefix starts the assistant's turn, as RULER does.
        text = apply_chat(question) + answer_prefix.strip() if apply_chat else question + answer_prefix
        out.append(GenerateRequest(text, max_new_tokens, ("\n\n",)))
    return out


def score(items: list[dict], generations) -> list[ItemResult]:
    return [ItemResult(task=NAME, item_id=item["id"], prediction=gen.text.strip(),
                       correct=item["value"] in gen.text, score=float(item["value"] in gen.text),
                       tokens=gen.num_tokens, extra={"length": item["length"], "depth": item["depth"]})
            for item, gen in zip(items, generations)]


def evaluate(engine, tokenizer, max_context: int, limit: int | None = None, apply_chat=None,
             seed: int = 0) -> list[ItemResult]:
    items = build_items(tokenizer, max_context, seed=seed)
    items = items[:limit] if limit is not None else items
    return score(items, engine.generate(requests(items, apply_chat=apply_chat)))
