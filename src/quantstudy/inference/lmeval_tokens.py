"""lm-eval's request tokenization and generation cut, shared by every engine.

Each engine must score the *same token ids* for the same request, or an engine comparison
measures tokenization instead of arithmetic. The rules copy lm-eval 0.4.13's HFLM:
`_encode_pair` (trailing context whitespace moves to the continuation; the whole string is
encoded and split), `tok_encode` (no special tokens when the text already starts with the
prefix token's text), the empty-context rule (BOS, else EOS, stands in), `tok_batch_encode`
for generation prompts (special tokens unless the first prompt starts with BOS text), and
the generation cut (the text ends at the earliest stop string; the tokens kept are those
whose decoded text lies entirely before it).

The in-process engine feeds these ids to the model; the vLLM engine sends them as token-id
prompts, so the server's own tokenizer never re-tokenizes a request.
"""

from __future__ import annotations

from quantstudy.inference.requests import Generation, LoglikRequest


def stop_index(text: str, stop: tuple[str, ...]) -> int:
    """Where lm-eval cuts a generation: the earliest stop string's position, -1 for none."""
    return min((text.find(s) for s in stop if s and s in text), default=-1)


class LmEvalTokens:
    def __init__(self, tokenizer, extra_eos: tuple[int, ...] = ()):
        self.tokenizer = tokenizer
        # HFLM: prefix = BOS if the tokenizer has one, else EOS; EOT = EOS.
        bos = tokenizer.bos_token_id
        self.prefix_token_id = bos if bos is not None else tokenizer.eos_token_id
        self.eot_token_id = tokenizer.eos_token_id
        self._prefix_text = tokenizer.decode(self.prefix_token_id)
        self.eos_ids = {i for i in (self.eot_token_id, *extra_eos) if i is not None}

    def encode(self, texts: list[str]) -> list[list[int]]:
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
        ctx_ids = dict(zip(unique, self.encode(unique)))
        for i, ctx, whole in zip(pending, ctx_texts, self.encode(whole_texts)):
            c = ctx_ids[ctx]
            pairs[i] = (c, whole[len(c):])
        return pairs  # type: ignore[return-value]

    def encode_prompts(self, prompts: list[str]) -> list[list[int]]:
        """HFLM.tok_batch_encode: no special tokens if the first prompt starts with BOS text."""
        bos = self.tokenizer.bos_token
        skip = bos is not None and bool(prompts) and prompts[0].startswith(bos)
        return [list(ids) for ids in self.tokenizer(prompts, **({"add_special_tokens": False} if skip else {}))["input_ids"]]

    def hit_stop(self, tokens: list[int], stop: tuple[str, ...]) -> bool:
        if not stop:
            return False
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return any(s and s in text for s in stop)

    def finish(self, tokens: list[int], stop: tuple[str, ...]) -> Generation:
        """The generation as lm-eval reports it: cut at the earliest stop string."""
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        cut = stop_index(text, stop)
        if cut < 0:
            return Generation(text, len(tokens), tuple(tokens))
        text = text[:cut]
        n = len(tokens)  # tokens whose decoded text lies entirely before the cut
        while n > 0 and len(self.tokenizer.decode(tokens[:n], skip_special_tokens=True)) > cut:
            n -= 1
        return Generation(text, n, tuple(tokens[:n]))
