"""HFBackend against plain, one-request-at-a-time model calls on the embedded model.

Prefix sharing, packing and batching are optimizations: each request's result must equal
what a single full forward of `(context + continuation)[:-1]` gives (float32, within 1e-4),
whatever the packing budget and request order. Generation must equal transformers' own
greedy `generate`, prompt by prompt.
"""

import random

import pytest
import torch

from quantstudy.inference.hf_engine import HFEngine as HFBackend
from quantstudy.inference.hf_packing import build_clusters, build_rows
from quantstudy.inference.requests import GenerateRequest, LoglikRequest

pytestmark = pytest.mark.slow


def mixed_requests():
    """Prefix-sharing shapes the backend must handle: MC options, a 5-shot MMLU subject,
    Winogrande's two contexts, an empty context, trailing spaces, duplicates."""
    from quantstudy.evaluate.tasks.multiple_choice import ARC_CHALLENGE, MMLU_TASK, WINOGRANDE

    reqs = []
    for task, docs in ((ARC_CHALLENGE, ARC_CHALLENGE.load_docs(3)), (WINOGRANDE, WINOGRANDE.load_docs(2)),
                       (MMLU_TASK, MMLU_TASK.load_docs(2, subjects=["anatomy"]))):
        for d in docs:
            reqs += task.requests(d)
    reqs += [LoglikRequest("", "Hello world, this is a test."), LoglikRequest("The capital of France is ", "Paris"),
             LoglikRequest("The capital of France is", " Paris"), LoglikRequest("2 + 2 =", " 4"),
             LoglikRequest("2 + 2 =", " 4")]
    return reqs


def reference(model, tokenizer, req, max_length=None):
    """lm-eval's recipe, written out plainly: one unpadded forward per request."""
    ctx, cont = req.context, req.continuation
    if ctx == "":
        c, x = [tokenizer.bos_token_id], tokenizer(cont, add_special_tokens=False)["input_ids"]
    else:
        n = len(ctx) - len(ctx.rstrip())
        ctx, cont = (ctx[:-n], ctx[-n:] + cont) if n else (ctx, cont)
        c = tokenizer(ctx)["input_ids"]
        x = tokenizer(ctx + cont)["input_ids"][len(c):]
    inp = (c + x)[-(max_length + 1):][:-1] if max_length else (c + x)[:-1]
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(torch.tensor([inp])).logits[0, -len(x):].float(), dim=-1)
    target = torch.tensor(x)
    return float(logprobs.gather(-1, target[:, None]).sum()), bool((logprobs.argmax(-1) == target).all()), len(x)


@pytest.fixture(scope="module")
def setup(smollm2):
    torch.set_num_threads(2)
    model, tokenizer, _ = smollm2
    reqs = mixed_requests()
    return model, tokenizer, reqs, [reference(model, tokenizer, r) for r in reqs]


@pytest.mark.parametrize("max_tokens", [48, 1024])
def test_loglikelihood_equals_one_forward_per_request(setup, max_tokens):
    model, tokenizer, reqs, expected = setup
    got = HFBackend(model, tokenizer, max_tokens=max_tokens, progress=False).loglikelihood(reqs)
    assert len(got) == len(reqs)
    for g, (lp, greedy, n) in zip(got, expected):
        assert abs(g.logprob - lp) <= 1e-4
        assert (g.is_greedy, g.num_tokens) == (greedy, n)
    assert got[-1] == got[-2]  # duplicates: one row, the same answer
    assert any(g.is_greedy for g in got) and not all(g.is_greedy for g in got)


def test_results_follow_request_order(setup):
    model, tokenizer, reqs, expected = setup
    order = list(range(len(reqs)))
    random.Random(0).shuffle(order)
    got = HFBackend(model, tokenizer, progress=False).loglikelihood([reqs[i] for i in order])
    for g, i in zip(got, order):
        assert abs(g.logprob - expected[i][0]) <= 1e-4


def test_prefix_sharing_groups_the_mmlu_subject(setup):
    model, tokenizer, reqs, _ = setup
    backend = HFBackend(model, tokenizer, progress=False)
    clusters = build_clusters(build_rows(backend.encode_pairs(reqs), backend.max_length))
    mmlu = [c for c in clusters if len(c.prefix) > 200]  # the 5-shot prompt, once
    assert len(mmlu) == 1 and len(mmlu[0].rows) == 2  # two questions, their 4 letters deduplicated
    assert sum(c.size() for c in clusters) < sum(len(r.tokens) for c in clusters for r in c.rows)


def test_left_truncation_to_max_length(setup):
    model, tokenizer, reqs, _ = setup
    long = [r for r in reqs if len(r.context) > 1000][:4]
    got = HFBackend(model, tokenizer, max_length=64, progress=False).loglikelihood(long)
    for g, r in zip(got, long):
        assert abs(g.logprob - reference(model, tokenizer, r, max_length=64)[0]) <= 1e-4


def test_generate_equals_transformers_greedy(smollm2):
    model, tokenizer, _ = smollm2
    prompts = ["The capital of France is", "Here is a short poem about the sea:\n",
               "Question: What is 7 times 6?\nAnswer:"]
    reqs = [GenerateRequest(p, 24) for p in prompts]
    got = HFBackend(model, tokenizer, batch_size=3, progress=False).generate(reqs)
    for req, gen in zip(reqs, got):
        ids = tokenizer(req.prompt, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=24, do_sample=False)
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        new = new[:new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new
        assert gen.text == tokenizer.decode(new, skip_special_tokens=True)
        assert gen.num_tokens == len(new)


def test_generate_cuts_at_earliest_stop_string(smollm2):
    model, tokenizer, _ = smollm2
    backend = HFBackend(model, tokenizer, progress=False)
    free = backend.generate([GenerateRequest("Count: 1, 2, 3,", 16)])[0]
    assert free.num_tokens == 16
    stop = free.text.strip().split(",")[1]  # a string the free run produces mid-way
    cut = backend.generate([GenerateRequest("Count: 1, 2, 3,", 16, stop=(",", stop))])[0]
    assert cut.text == free.text[:free.text.index(",")]
    assert cut.num_tokens < free.num_tokens
    assert backend.generate([]) == [] and backend.loglikelihood([]) == []
