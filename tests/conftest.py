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
