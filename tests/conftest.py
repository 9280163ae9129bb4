import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# As `quantstudy.cli` sets at import, but before *any* test imports transformers (which reads
# it once): otherwise the CLI tests' one-line-error checks depend on the order tests run in.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest
import torch


@pytest.fixture(scope="session")
def smollm2():
    """The embedded default model in float32: (model, tokenizer, folder). Converted once, cached."""
    from quantstudy.inference.loading import load_model

    torch.manual_seed(0)
    return load_model("smollm2-135m", dtype="float32")


@pytest.fixture(scope="session")
def real_linears(smollm2):
    """A handful of the default model's linear weights: attention and MLP, early and late layers."""
    model = smollm2[0]
    names = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
             "model.layers.15.mlp.down_proj", "model.layers.29.mlp.gate_proj", "model.layers.29.self_attn.o_proj"]
    return {n: model.get_submodule(n).weight.detach().clone() for n in names}


def random_llama(layers: int = 1, hidden: int = 128, intermediate: int = 256, heads: int = 2, kv_heads: int = 1):
    """(model, tokenizer): a random-init Llama (seed 0, tied embeddings) with the default model's
    tokenizer -- the small stand-in for format and input tests, no weights needed."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from quantstudy.models.references import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      tie_word_embeddings=True, architectures=["LlamaForCausalLM"])
    return LlamaForCausalLM(cfg).eval(), tok


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """(config, folder, completed process): the tiny study run once, uninterrupted -- the
    reference the kill, Ray, failure and report tests compare with (they copy, never modify it)."""
    from study_runs import TINY, run_study

    root = tmp_path_factory.mktemp("study")
    cfg = root / "tiny.yaml"
    cfg.write_text(TINY)
    out = root / "reference"
    result = run_study(cfg, out)
    assert result.returncode == 0, result.stderr[-3000:]
    return cfg, out, result
