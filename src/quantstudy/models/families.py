"""Model families as data: which operation feeds which linears inside one decoder layer.

SmoothQuant and AWQ move a per-channel scale between an operation and the linears that
read its output: `prev` is divided by s, the `targets`' input columns multiplied by s, and
the float model computes the same function. Which `prev` feeds which `targets` is an
architecture fact, so it is a table here, keyed by the `architectures` entry of a model's
config.json, and never guessed: an architecture without an entry is a one-line error for
the recipes that need one (a missing module used to be skipped silently, so smoothing did
nothing on a model it did not know).

- `norm_mappings`: a norm -> the linears reading it (SmoothQuant and AWQ).
- `linear_mappings`: a linear -> the linears reading its output (AWQ only): up -> down
  across the gated activation (act(gate) * up / s is (act(gate) * up) / s), v -> o across
  attention (softmax weights sum the rows of V / s). A fused `prev` (Phi-3's gate_up_proj,
  qkv_proj) feeds its targets with a slice of its output rows: `prev_rows` says which.
- `norm_offset`: the norm computes x_hat * (offset + weight); Gemma's is 1 + weight, so
  dividing its output by s is weight -> (1 + weight) / s - 1, not weight / s.

Entries follow the released modelling code in transformers (and agree with
llm-compressor's AWQ mapping registry for the same architectures).
"""

from __future__ import annotations

from dataclasses import dataclass

from quantstudy.errors import QuantstudyError


@dataclass(frozen=True)
class Mapping:
    prev: str                        # module name inside a decoder layer
    targets: tuple[str, ...]
    prev_rows: tuple[float, float] = (0.0, 1.0)   # fraction of prev's output rows the targets read


@dataclass(frozen=True)
class Family:
    name: str
    architectures: tuple[str, ...]
    norm_mappings: tuple[Mapping, ...]
    linear_mappings: tuple[Mapping, ...]
    norm_offset: float = 0.0


_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_GATE_UP = ("mlp.gate_proj", "mlp.up_proj")
_LINEAR = (Mapping("mlp.up_proj", ("mlp.down_proj",)), Mapping("self_attn.v_proj", ("self_attn.o_proj",)))

FAMILIES: tuple[Family, ...] = (
    Family("llama", ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"),
           (Mapping("input_layernorm", _QKV), Mapping("post_attention_layernorm", _GATE_UP)), _LINEAR),
    # Gemma 2/3: the MLP reads pre_feedforward_layernorm (post_attention_layernorm normalises the
    # attention output before the residual add), and RMSNorm scales by 1 + weight.
    Family("gemma", ("Gemma2ForCausalLM", "Gemma3ForCausalLM"),
           (Mapping("input_layernorm", _QKV), Mapping("pre_feedforward_layernorm", _GATE_UP)), _LINEAR,
           norm_offset=1.0),
    # Phi-3: fused qkv_proj and gate_up_proj. V is the last third of qkv's rows (when there are as
    # many KV heads as query heads -- otherwise the shapes differ and the fold is skipped, as for
    # v -> o under grouped-query attention everywhere); up is the second half of gate_up's rows.
    Family("phi3", ("Phi3ForCausalLM",),
           (Mapping("input_layernorm", ("self_attn.qkv_proj",)),
            Mapping("post_attention_layernorm", ("mlp.gate_up_proj",))),
           (Mapping("mlp.gate_up_proj", ("mlp.down_proj",), (0.5, 1.0)),
            Mapping("self_attn.qkv_proj", ("self_attn.o_proj",), (2 / 3, 1.0)))),
)
BY_ARCHITECTURE = {arch: f for f in FAMILIES for arch in f.architectures}


def family_for(architectures, purpose: str = "SmoothQuant and AWQ") -> Family:
    """The family of a config's `architectures` list (or a config object / dict holding one)."""
    if isinstance(architectures, dict):
        architectures = architectures.get("architectures")
    elif not isinstance(architectures, (list, tuple)):
        architectures = getattr(architectures, "architectures", None)
    for arch in architectures or ():
        if arch in BY_ARCHITECTURE:
            return BY_ARCHITECTURE[arch]
    names = ", ".join(architectures or ["none named"])
    raise QuantstudyError(f"{purpose}: quantstudy has no norm/linear mappings for {names} (known: "
                          f"{', '.join(BY_ARCHITECTURE)}); quantize it with --algo gptq or rtn, without smoothing")
