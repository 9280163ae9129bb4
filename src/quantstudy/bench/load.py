"""Workloads and load profiles: the paper's use cases driven against an OpenAI endpoint.

Why our own client and not GuideLLM (the paper's tool, `guidellm==0.8.1`): GuideLLM
installs fine but pulls torch and a large dependency tree into whichever environment runs
it, and quantstudy's and vLLM's environments pin different stacks -- a third environment
for a load generator is a heavy price for ~200 lines. What matters for the paper's
numbers is small and done here exactly: prompts of an exact token count (verified by
re-encoding with the served model's own tokenizer, as the server counts them), a fixed
output length (`ignore_eos` + `min_tokens`, checked against the server's usage report),
streaming timestamps for TTFT/ITL, and GuideLLM's four profiles (synchronous, concurrent,
poisson, throughput). It needs only httpx, speaks to any OpenAI-compatible
`/v1/completions`, and its metrics use GuideLLM's definitions (ITL = (E2E - TTFT) /
(output tokens - 1)), so results stay comparable with a GuideLLM run against the same
server (toolchain-notes show the command).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from dataclasses import asdict, dataclass

import httpx

from quantstudy.bench.roofline_constants import USE_CASES
from quantstudy.data.windows import prose_stream
from quantstudy.errors import QuantstudyError
from quantstudy.inference.vllm_engine import stream_events

PROFILES = ("synchronous", "concurrent", "poisson", "throughput")


# -- workloads -------------------------------------------------------------------------
def use_case_shape(use_case: str | tuple[int, int], scale: float = 1.0) -> tuple[int, int]:
    """(prompt tokens, output tokens) of a use case, shrunk by `scale` for slow hardware:
    scale 1/16 turns code completion's 256/1024 into 16/64. Never below one token."""
    if isinstance(use_case, str):
        if use_case not in USE_CASES:
            raise QuantstudyError(f"unknown use case {use_case!r}; choose one of: {', '.join(USE_CASES)}")
        use_case = USE_CASES[use_case]
    if scale <= 0:
        raise QuantstudyError(f"scale must be positive, got {scale}")
    prompt, output = use_case
    return max(1, round(prompt * scale)), max(1, round(output * scale))


@dataclass(frozen=True)
class Request:
    prompt: str
    prompt_tokens: int     # what the server's tokenizer makes of `prompt` (checked)
    output_tokens: int     # generated exactly: max_tokens = min_tokens, ignore_eos


def exact_prompt(tokenizer, n_tokens: int, start: int) -> str:
    """Text that `tokenizer` (special tokens included, as the server adds them) encodes to
    exactly `n_tokens` tokens, cut from the packaged stream at about `start`.

    Decoding a token slice and re-encoding it does not always round-trip (a cut inside a
    word or a run of spaces merges differently), so each candidate is re-encoded and the
    window slides one token on until the count is exact."""
    stream = prose_stream(tokenizer)
    special = len(tokenizer("")["input_ids"])  # BOS and the like: counted by the server too
    body = n_tokens - special
    if body < 1:
        raise QuantstudyError(f"a prompt of {n_tokens} tokens leaves no room beside {special} special tokens")
    while len(stream) < body + 256:  # long use cases (4096) on a short corpus: wrap around
        stream = stream + stream
    for shift in range(256):
        at = (start + shift) % (len(stream) - body)
        text = tokenizer.decode(list(stream[at:at + body]), clean_up_tokenization_spaces=False)
        if len(tokenizer(text)["input_ids"]) == n_tokens:
            return text
    raise QuantstudyError(f"could not cut a prompt of exactly {n_tokens} tokens from the packaged text")


def make_requests(tokenizer, prompt_tokens: int, output_tokens: int, count: int, seed: int = 0) -> list[Request]:
    """`count` distinct prompts of exactly `prompt_tokens` tokens, each asking for
    `output_tokens`. Distinct starts matter: vLLM caches prefixes, and identical prompts
    would measure the cache, not prefill."""
    rng = random.Random(seed)
    span = max(1, len(prose_stream(tokenizer)) - prompt_tokens)
    seen, out = set(), []
    for attempt in range(50 * count):
        text = exact_prompt(tokenizer, prompt_tokens, rng.randrange(span))
        # a repeat only once the corpus has run out of fresh windows (huge prompts)
        if text not in seen or attempt >= 10 * count:
            seen.add(text)
            out.append(Request(text, prompt_tokens, output_tokens))
        if len(out) == count:
            break
    return out


# -- one request -----------------------------------------------------------------------
@dataclass
class RequestResult:
    prompt_tokens_asked: int
    output_tokens_asked: int
    prompt_tokens: int = 0        # from the server's usage report
    output_tokens: int = 0
    start_s: float = 0.0          # sent, seconds after the run began
    ttft_s: float = math.nan      # first streamed token chunk
    itl_s: float = math.nan       # mean gap per token after the first
    e2e_s: float = math.nan
    chunks: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def completion_body(name: str, req: Request) -> dict:
    return {"model": name, "prompt": req.prompt, "max_tokens": req.output_tokens,
            # vLLM sampling extensions: generate exactly max_tokens whatever the model says
            "min_tokens": req.output_tokens, "ignore_eos": True, "temperature": 0.0,
            "stream": True, "stream_options": {"include_usage": True}}


async def send(client: httpx.AsyncClient, url: str, name: str, req: Request, t_run: float) -> RequestResult:
    """One streamed completion, timed with the monotonic clock from just before sending."""
    res = RequestResult(req.prompt_tokens, req.output_tokens)
    t0 = time.perf_counter()
    res.start_s = t0 - t_run
    first = last = None
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=completion_body(name, req)) as resp:
            if resp.status_code != 200:
                detail = (await resp.aread()).decode("utf-8", "replace").strip().splitlines()
                res.error = f"HTTP {resp.status_code}: {(detail[0] if detail else '')[:200]}"
                return res
            async for chunk in stream_events(resp):
                if chunk.get("error") and first is None:   # the server gave up mid-stream: say why
                    err = chunk["error"]
                    res.error = "server error: " + str(err.get("message", err) if isinstance(err, dict) else err)[:200]
                if chunk.get("choices"):  # token chunk; the usage-only chunk has none
                    last = time.perf_counter()
                    first = first or last
                    res.chunks += 1
                if chunk.get("usage"):
                    res.prompt_tokens = chunk["usage"].get("prompt_tokens", 0)
                    res.output_tokens = chunk["usage"].get("completion_tokens", 0)
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        res.error = f"{type(exc).__name__}: {str(exc)[:200]}"
        return res
    res.e2e_s = time.perf_counter() - t0
    if first is None:
        res.error = res.error or "no token streamed"
        return res
    res.ttft_s = first - t0
    res.itl_s = (last - first) / (res.output_tokens - 1) if res.output_tokens > 1 else 0.0
    return res


# -- profiles --------------------------------------------------------------------------
@dataclass(frozen=True)
class Profile:
    kind: str                     # one of PROFILES
    concurrency: int = 1          # concurrent: streams; throughput: cap (0 = all at once)
    rate: float = 0.0             # poisson: requests per second
    seed: int = 0

    def __post_init__(self):
        if self.kind not in PROFILES:
            raise QuantstudyError(f"unknown load profile {self.kind!r}; choose one of: {', '.join(PROFILES)}")
        if self.kind == "poisson" and self.rate <= 0:
            raise QuantstudyError("the poisson profile needs a rate > 0 (requests/s)")
        if self.kind == "concurrent" and self.concurrency < 1:
            raise QuantstudyError("the concurrent profile needs concurrency >= 1")

    @property
    def label(self) -> str:
        return {"synchronous": "sync", "concurrent": f"conc={self.concurrency}",
                "poisson": f"rate={self.rate:g}/s", "throughput": "max"}[self.kind]

    def params(self) -> dict:
        return {"concurrency": self.concurrency} if self.kind == "concurrent" else \
               {"rate": self.rate, "seed": self.seed} if self.kind == "poisson" else {}


def poisson_arrivals(rate: float, n: int, seed: int = 0) -> list[float]:
    """Send times (s from the start) of a Poisson process: exponential gaps of mean 1/rate,
    seeded so a rate sweep replays the same arrival pattern on every format."""
    rng, t, times = random.Random(seed), 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        times.append(t)
    return times


async def _run_async(url: str, name: str, requests: list[Request], profile: Profile) -> tuple[list[RequestResult], float]:
    width = {"synchronous": 1, "concurrent": profile.concurrency, "poisson": len(requests),
             "throughput": profile.concurrency or len(requests)}[profile.kind]
    width = max(1, min(width, len(requests)))
    limits = httpx.Limits(max_connections=width, max_keepalive_connections=width)
    timeout = httpx.Timeout(None, connect=30.0)  # a long generation on a CPU is not a hang
    async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:
        t_run = time.perf_counter()
        if profile.kind == "poisson":
            async def at(delay: float, req: Request) -> RequestResult:
                await asyncio.sleep(delay - (time.perf_counter() - t_run))
                return await send(client, url, name, req, t_run)
            arrivals = poisson_arrivals(profile.rate, len(requests), profile.seed)
            results = await asyncio.gather(*(at(d, r) for d, r in zip(arrivals, requests)))
        else:
            # `width` workers drain a shared queue: synchronous is the one-worker case,
            # throughput the one-worker-per-request case.
            queue = list(enumerate(requests))[::-1]
            results = [None] * len(requests)

            async def worker():
                while queue:
                    i, req = queue.pop()
                    results[i] = await send(client, url, name, req, t_run)
            await asyncio.gather(*(worker() for _ in range(width)))
        return list(results), time.perf_counter() - t_run


def run_load(url: str, name: str, requests: list[Request], profile: Profile) -> tuple[list[RequestResult], float]:
    """Drive `requests` against `url` under `profile`: (per-request results, wall seconds)."""
    return asyncio.run(_run_async(url.rstrip("/"), name, requests, profile))


# -- metrics ---------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """q-th percentile, linear interpolation between order statistics (numpy's default)."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(results: list[RequestResult], duration_s: float, slo_ttft_s: float | None = None,
              slo_itl_s: float | None = None) -> dict:
    """Run metrics: latency percentiles, rates, and goodput under an SLO (None = no limit).

    Goodput counts requests that finished *and* met both limits -- the paper's
    "queries per second under latency limits"."""
    ok = [r for r in results if r.ok]
    m: dict = {"requests": len(results), "failed": len(results) - len(ok), "duration_s": duration_s,
               "requests_per_s": len(ok) / duration_s if duration_s > 0 else math.nan,
               "output_tokens_per_s": sum(r.output_tokens for r in ok) / duration_s if duration_s > 0 else math.nan,
               "mismatched_tokens": sum(r.output_tokens != r.output_tokens_asked or r.prompt_tokens != r.prompt_tokens_asked
                                        for r in ok)}
    for key in ("ttft", "itl", "e2e"):
        values = [getattr(r, f"{key}_s") for r in ok]
        m[f"{key}_mean_s"] = sum(values) / len(values) if values else math.nan
        for q, tag in ((50, "median"), (90, "p90"), (99, "p99")):
            m[f"{key}_{tag}_s"] = percentile(values, q)
    good = [r for r in ok if (slo_ttft_s is None or r.ttft_s <= slo_ttft_s)
            and (slo_itl_s is None or r.itl_s <= slo_itl_s)]
    m.update(slo_ttft_s=slo_ttft_s, slo_itl_s=slo_itl_s,
             goodput_fraction=len(good) / len(results) if results else math.nan,
             goodput_rps=len(good) / duration_s if duration_s > 0 else math.nan)
    return m


def result_dicts(results: list[RequestResult]) -> list[dict]:
    return [asdict(r) for r in results]
