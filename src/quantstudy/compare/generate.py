"""Greedy generations for the compare stage, one cached result per (model, prompt).

Every model answers the same prompts the same way: the prompt as a single user turn
rendered with the model's chat template (plain text when it has none), greedy decoding
through the engine's `generate`, `max_new_tokens` at most, stopping at EOS only (no stop
strings: an open-ended answer has no natural cut). Each answer goes to the results store
under a key of everything that determines it - the model identity (file fingerprint and
how it was loaded), the prompt id and the exact rendered prompt, the token limit, the chat
template and this module's version - so a rerun, or a larger `--limit`, generates only
the prompts still missing.

We keep the generated token ids, not only the text: the first position where a variant's
greedy choice leaves the baseline's is the most direct measure of divergence, and text
alone cannot give it (different ids can decode to the same string), so a `Generation`
carries the ids where the engine knows them.

Caveat: batched decoding pads prompts, which changes matmul shapes and so float rounding.
The float baseline shrugs that off (batched = one-at-a-time HF `generate`, token for
token, on the prompts we checked), but W8A8's per-token activation rounding turns an ulp
into a whole quantization step: on 4 prompts, 2 W8A8-INT8 answers changed between batch
4 and batch 1, one at the first token (a 0.04-logit near-tie). So a W8A8 answer depends a
little on which prompts shared its batch - real engines batch too - and a cached answer
is what its batch produced. Baseline and variants are batched alike (same order and
chunks); pass `batch_size=1` for answers that depend on the prompt alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from quantstudy.data.prompts import Prompt
from quantstudy.inference.hf_engine import HFEngine
from quantstudy.inference.requests import GenerateRequest, Generation
from quantstudy.store import ResultStore, content_key

KIND = "compare-generation"
# Bump when what a stored generation means changes (rendering, decoding, stored fields).
GENERATION_VERSION = 1
DEFAULT_MAX_NEW_TOKENS = 256


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def template_id(tokenizer) -> str:
    """Identity of the chat template (its text's hash), or "none" for plain prompts."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one is used
        template = template.get("default")
    return _sha(template) if template else "none"


def render_prompt(tokenizer, prompt: str) -> str:
    """The text the model sees: one user turn and the assistant header, as a chat model
    expects (the template may also add its default system turn, as SmolLM2's does)."""
    if template_id(tokenizer) == "none":
        return prompt
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=False)


def generation_inputs(model_id: str, prompt: Prompt, rendered: str, max_new_tokens: int, template: str) -> dict:
    """Everything a stored generation depends on; its content hash is the store key."""
    return {"stage": KIND, "version": GENERATION_VERSION, "model": model_id, "prompt_id": prompt.id,
            "rendered_sha": _sha(rendered), "max_new_tokens": int(max_new_tokens), "template": template}


class PromptKeys:
    """Store keys of one model's generations for a prompt list (no model needed)."""

    def __init__(self, model_id: str, tokenizer, prompts: Sequence[Prompt], max_new_tokens: int):
        self.template = template_id(tokenizer)
        self.rendered = [render_prompt(tokenizer, p.prompt) for p in prompts]
        self.inputs = [generation_inputs(model_id, p, r, max_new_tokens, self.template)
                       for p, r in zip(prompts, self.rendered)]
        self.keys = [content_key(**i) for i in self.inputs]

    def missing(self, store: ResultStore) -> list[int]:
        return [i for i, k in enumerate(self.keys) if store.get(k) is None]


def generate_cached(store: ResultStore, model_id: str, model_loader: Callable[[], tuple], tokenizer,
                    prompts: Sequence[Prompt], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                    batch_size: int = 8, progress=None, label: str = "generate",
                    engine_factory: Callable[..., HFEngine] = HFEngine) -> list[dict]:
    """Each prompt's generation {"text", "tokens", "exact_tokens"}, in prompt order.

    Stored results are read back; only missing prompts are generated, `batch_size` at a time,
    each batch stored in one transaction (a kill loses at most the batch in flight).
    `model_loader()` returns the model and is called only if something is missing, so a
    fully cached rerun loads no weights. `progress` is a rich Progress (or None).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    keys = PromptKeys(model_id, tokenizer, prompts, max_new_tokens)
    todo = keys.missing(store)
    if todo:
        model = model_loader()
        engine = engine_factory(model, tokenizer, batch_size=batch_size, progress=False)
        # Similar lengths in one batch waste less padding; the order is deterministic, so the
        # baseline and every variant see the same batches.
        todo.sort(key=lambda i: (-len(keys.rendered[i]), prompts[i].id))
        bar = progress.add_task(label, total=len(prompts), completed=len(prompts) - len(todo)) if progress else None
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            gens = engine.generate([GenerateRequest(keys.rendered[i], max_new_tokens) for i in chunk])
            if len(gens) != len(chunk):
                raise RuntimeError(f"engine returned {len(gens)} generations for {len(chunk)} prompts")
            for i, gen in zip(chunk, gens):
                store.put(keys.keys[i], KIND, keys.inputs[i], _record(gen, tokenizer))
            if progress:
                progress.advance(bar, len(chunk))
        if progress:
            progress.remove_task(bar)
    out = [store.get(k) for k in keys.keys]
    lost = sum(r is None for r in out)
    if lost:
        raise RuntimeError(f"{lost} generations missing from the store after generating them")
    return out


def _record(gen: Generation, tokenizer) -> dict:
    tokens = getattr(gen, "tokens", None)
    if tokens is not None and len(tokens) == gen.num_tokens:
        return {"text": gen.text, "tokens": list(tokens), "exact_tokens": True}
    # An engine that does not expose ids: re-encoding the text is the closest we can get; it
    # can differ from what was generated, so first-divergence positions are approximate.
    ids = tokenizer(gen.text, add_special_tokens=False)["input_ids"]
    return {"text": gen.text, "tokens": list(ids), "exact_tokens": False}
