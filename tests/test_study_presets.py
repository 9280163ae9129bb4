"""Stored studies stay reusable: a paper-format variant's quantize job keeps the key v0.4.0 gave
it, whatever fields later schemes gained (FP4 scale dtypes, an FP8 KV cache), so a rerun after
an upgrade reuses its checkpoints instead of quantizing again."""
import json

import pytest
from pathlib import Path

from quantstudy.models import resolve_model
from quantstudy.study import jobs as J
from quantstudy.study.config import StudyConfig, parse_config

# Computed by v0.4.0 (commit cd8210f) for the default study with the same arguments.
V040_KEYS = {"w8a8-fp8": "615d34ee6239928a231f7b27fd4314c7", "w8a8-int8": "b491ae54a3f000888b6bc2c6bce87b90",
             "w4a16-gptq": "19c4d62542db08b7196fc595ff6765f6", "w4a16-awq": "8d756692580c11e1712921a13689429e",
             "w4a16-rtn": "6f8d1148dbcaeb9cc5b5a80a1d8ac633"}


def test_paper_variants_keep_their_quantize_job_keys():
    cfg = StudyConfig()
    folder = Path(resolve_model(cfg.model))
    model_config = json.loads((folder / "config.json").read_text())
    keys = {v.name: J.quantize_job(v, cfg, "FP", cfg.model, folder, Path("/tmp/x"), model_config).key
            for v in cfg.variants}
    assert keys == V040_KEYS


def test_frontier_preset_adds_the_2026_formats_and_long_context_perplexity():
    from quantstudy.errors import QuantstudyError
    from quantstudy.study.config import DEFAULT_VARIANTS, parse_config, preset_study

    cfg = parse_config("model: smollm2-135m\nvariants: frontier\n", "study.yaml")
    names = [v.name for v in cfg.variants]
    assert names[:len(DEFAULT_VARIANTS)] == [v["name"] for v in DEFAULT_VARIANTS]
    folder = Path(resolve_model(cfg.model))
    model_config = json.loads((folder / "config.json").read_text())
    labels = {}
    for v in cfg.variants:
        scheme, _ = J.resolve_variant(v, model_config)
        labels[v.name] = scheme.label
    assert {"NVFP4", "NVFP4A16", "MXFP4A16", "MXFP8", "W4A8-FP8", "W8A8-INT8+KV-FP8"} <= set(labels.values())
    # format-fixed groups stay what the format says ('auto' does not resize them)
    assert J.resolve_variant(next(v for v in cfg.variants if v.scheme == "mxfp4a16"), model_config)[0] \
        .weights.group_size == 32
    assert "ppl_long" in cfg.evaluate.tasks and "arc_challenge" in cfg.evaluate.tasks
    # a study that names its own tasks keeps them; 'paper' is the default study
    own = parse_config("model: m\nvariants: frontier\nevaluate: {tasks: [ppl]}\n", "study.yaml")
    assert own.evaluate.tasks == ("ppl",)
    assert preset_study("paper").variants == StudyConfig().variants
    with pytest.raises(QuantstudyError, match=r"study.yaml line 2: variants: unknown variant set 'newest'"):
        parse_config("model: m\nvariants: newest\n", "study.yaml")


def test_protocol_paper_sets_the_papers_evaluation_unless_the_study_says_otherwise():
    from quantstudy.errors import QuantstudyError
    from quantstudy.study.config import PAPER_PROTOCOL
    from quantstudy.study.jobs import evaluate_job

    paper = parse_config("model: m\nprotocol: paper\n").evaluate
    assert (paper.fewshot, paper.samples, paper.seeds) == ("paper", "paper", 3)
    assert paper.tasks == PAPER_PROTOCOL["tasks"]
    s = paper.sampling()
    assert (s.samples, s.temperature, s.top_p, s.seeds) == (50, 0.2, 0.95, 3)
    own = parse_config("model: m\nprotocol: paper\nevaluate: {tasks: [gsm8k], seeds: 5, fewshot: zero}\n").evaluate
    assert (own.tasks, own.seeds, own.fewshot, own.samples) == (("gsm8k",), 5, "zero", "paper")
    assert parse_config("model: m\nprotocol: paper\nevaluate: false\n").evaluate is None
    quick = parse_config("model: m\nprotocol: quick\nevaluate: {fewshot: zero}\n").evaluate
    assert (quick.fewshot, quick.seeds, quick.samples) == ("zero", 1, 1)
    with pytest.raises(QuantstudyError, match=r"study.yaml line 2: protocol: unknown value 'fast'"):
        parse_config("model: m\nprotocol: fast\n")
    # the protocol is part of what the evaluation job's key hashes
    cfg_paper, cfg_quick = parse_config("model: m\nprotocol: paper\n"), parse_config(
        "model: m\nevaluate: {tasks: [arc_challenge, hellaswag, winogrande, mmlu, gsm8k, humaneval, ppl, kl]}\n")
    assert evaluate_job(cfg_paper, "fp", [], {}).key != evaluate_job(cfg_quick, "fp", [], {}).key
