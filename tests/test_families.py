"""Model families as data: every listed architecture's mappings are right for its modules.

Tiny random-init models of each family are built from transformers configs (no weights
downloaded). What must hold: moving a per-channel scale across every mapping the family
table lists (the fold SmoothQuant and AWQ both use) leaves the float model's function
unchanged -- a wrong table (the wrong norm for Gemma's MLP, Gemma's 1 + weight gain, the
wrong rows of Phi-3's fused gate_up) changes the logits; SmoothQuant + GPTQ and AWQ run
end to end on each family and write checkpoints that load; an architecture without a table
is a one-line error.
"""

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

from quantstudy.errors import QuantstudyError
from quantstudy.inference.loading import load_fake_quant_model
from quantstudy.models.families import FAMILIES
from quantstudy.quantize.layerwise import fold_mapping, foldable
from quantstudy.quantize.recipes import Recipe
from quantstudy.quantize.sequential import decoder_layers, family_of, quantize_sequential, smooth_model
from quantstudy.quantize.writer import save_checkpoint
from quantstudy.schemes import get_scheme

CONFIGS = {
    "LlamaForCausalLM": transformers.LlamaConfig, "MistralForCausalLM": transformers.MistralConfig,
    "Qwen2ForCausalLM": transformers.Qwen2Config, "Qwen3ForCausalLM": transformers.Qwen3Config,
    "Gemma2ForCausalLM": transformers.Gemma2Config, "Gemma3ForCausalLM": transformers.Gemma3TextConfig,
    "Phi3ForCausalLM": transformers.Phi3Config,
}
VOCAB = 256


def tiny(arch: str, kv_heads: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    config = CONFIGS[arch](hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=kv_heads, head_dim=16, vocab_size=VOCAB, max_position_embeddings=128,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    config.architectures = [arch]
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():   # norm gains away from their init (ones, or Gemma's zeros): a scale must move them
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name:
                p.uniform_(-0.5, 0.5) if "Gemma" in arch else p.uniform_(0.5, 1.5)
    return model


def ids(n: int = 4, length: int = 24) -> torch.Tensor:
    return torch.randint(3, VOCAB, (n, length), generator=torch.Generator().manual_seed(1))


def test_the_table_covers_the_listed_architectures():
    assert {a for f in FAMILIES for a in f.architectures} == set(CONFIGS)


@pytest.mark.parametrize("arch", list(CONFIGS))
@pytest.mark.parametrize("kv_heads", [4, 2])   # multi-head and grouped-query attention
def test_folding_a_scale_across_every_mapping_keeps_the_function(arch, kv_heads):
    model = tiny(arch, kv_heads)
    family = family_of(model)
    x = ids()
    with torch.no_grad():
        before = model(x).logits
    folded = []
    for layer in decoder_layers(model):
        for mapping in family.norm_mappings + family.linear_mappings:
            targets = list(mapping.targets)
            if not foldable(layer, mapping, targets):
                continue
            width = layer.get_submodule(targets[0]).weight.shape[1]
            scales = torch.empty(width).uniform_(0.25, 4.0, generator=torch.Generator().manual_seed(len(folded)))
            fold_mapping(layer, mapping, targets, scales, family)
            folded.append(mapping.prev)
    with torch.no_grad():
        after = model(x).logits
    assert torch.allclose(after, before, rtol=1e-4, atol=1e-4 * before.abs().max().item()), arch
    # every norm mapping folds; v -> o only where V has the query heads' width (kv_heads == heads)
    per_layer = len(family.norm_mappings) + len(family.linear_mappings) - (kv_heads < 4)
    assert len(folded) == 2 * per_layer


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_smoothquant_is_function_preserving_and_moves_every_mapped_norm(arch):
    model = tiny(arch)
    family = family_of(model)
    x = ids()
    norms = {m.prev: decoder_layers(model)[0].get_submodule(m.prev).weight.clone() for m in family.norm_mappings}
    with torch.no_grad():
        before = model(x).logits
    smooth_model(model, ids(8), alpha=0.8, batch_size=4)
    with torch.no_grad():
        after = model(x).logits
    assert torch.allclose(after, before, rtol=1e-4, atol=1e-4 * before.abs().max().item())
    for name, old in norms.items():   # no mapping silently skipped
        assert not torch.equal(decoder_layers(model)[0].get_submodule(name).weight, old), name


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", pad_token="t0", bos_token="t1",
                                   eos_token="t2")


def _relative_error(model, reference, x) -> float:
    with torch.no_grad():
        out = model(x).logits
    assert torch.isfinite(out).all()
    return float((out - reference).norm() / reference.norm())


@pytest.mark.parametrize("arch", list(CONFIGS))
@pytest.mark.parametrize("scheme, recipe", [("w8a8-int8", Recipe("gptq", smoothquant=0.8)),
                                            ("w4a16", Recipe("awq"))])
def test_calibrated_recipes_run_on_every_family_reload_and_beat_rtn(arch, scheme, recipe, tokenizer, tmp_path):
    """End to end on each family: the checkpoint reloads, and its output is closer to the float
    model's than round-to-nearest of the same scheme (the reason to calibrate at all)."""
    from quantstudy.quantize.model import apply_fake_quant, quantize_model_weights

    model, x = tiny(arch), ids()
    with torch.no_grad():
        reference = model(x).logits
    chosen = get_scheme(scheme, 32) if scheme == "w4a16" else get_scheme(scheme)
    rtn = apply_fake_quant(tiny(arch), quantize_model_weights(tiny(arch), chosen, torch.bfloat16)[0], chosen)
    qweights, reports = quantize_sequential(model, chosen, recipe, ids(16), torch.bfloat16, batch_size=4)
    linears = sum(isinstance(m, torch.nn.Linear) for m in decoder_layers(model).modules())
    assert len(qweights) == linears   # every decoder linear, lm_head left alone
    save_checkpoint(model, tokenizer, qweights, chosen, tmp_path / "ckpt", torch.bfloat16,
                    {"algorithm": recipe.algorithm}, reports)
    loaded, _, _ = load_fake_quant_model(tmp_path / "ckpt")
    assert _relative_error(loaded, reference, x) < _relative_error(rtn, reference, x), (arch, scheme)


def test_an_architecture_without_a_table_is_a_one_line_error():
    config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB)
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(QuantstudyError, match="GPT2LMHeadModel.*known: LlamaForCausalLM"):
        quantize_sequential(model, get_scheme("w8a8-int8"), Recipe("gptq", smoothquant=0.8), ids(4), torch.bfloat16)
    with pytest.raises(QuantstudyError, match="no norm/linear mappings"):
        smooth_model(model, ids(4), alpha=0.5)


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_smoothquant_statistics_stop_the_layer_after_its_last_norm(arch):
    """SmoothQuant reads only the mapped norms' outputs: a batch stops once they have run, so
    the MLP's down projection never runs, and what the norms saw is what a full pass sees."""
    from quantstudy.quantize.activations import Activations, LayerBatches
    from quantstudy.quantize.layerwise import collect
    from quantstudy.quantize.sequential import capture_inputs

    model = tiny(arch)
    family = family_of(model)
    layers = decoder_layers(model)
    hidden = Activations()
    kwargs = capture_inputs(model, layers, ids(8), 4, hidden)
    layer, names = layers[0], [m.prev for m in family.norm_mappings]
    down = layer.mlp.down_proj   # the MLP's last linear, in every family here
    calls = []
    handle = down.register_forward_hook(lambda *_: calls.append(1))
    seen = {True: [], False: []}
    with torch.no_grad():
        for early in (True, False):
            collect(layer, LayerBatches(hidden, kwargs[0]), names, lambda n, x, e=early: seen[e].append((n, x.clone())),
                    outputs=True, stop_early=early)
            if early:
                assert calls == []
    handle.remove()
    assert len(calls) == 2   # the full pass: two batches
    assert [n for n, _ in seen[True]] == [n for n, _ in seen[False]]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(seen[True], seen[False]))
