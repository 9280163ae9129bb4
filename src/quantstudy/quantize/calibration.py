"""Calibration data as a named, recorded choice: which documents, how many tokens, which seed.

Sources (all offline, from `quantstudy.data.text`):
- `instruct-mix` (default, the paper's kind): GSM8K, MBPP and ARC-Challenge questions
  with their answers, formatted with the model's chat template;
- `lambada`: narrative passages; `wikitext`: Wikipedia sentences;
- `random`: uniform random token ids (what the paper warns hurts W4A16);
- `jsonl:PATH`: the user's file, one {"text": ...} or {"messages": [...]} per line.

Documents are shuffled with the seed, tokenized, joined with EOS and cut into samples
of exactly `seq_len` tokens, so every sample is full length. Only the calibration part of
each pool is used: its held-out tail is for perplexity checks (`data.text.heldout_texts`).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import torch

from quantstudy.data.text import POOLS, pool_documents
from quantstudy.errors import QuantstudyError

SOURCES = (*POOLS, "random", "jsonl:PATH")


@dataclass(frozen=True)
class CalibrationSpec:
    source: str = "instruct-mix"
    num_samples: int = 64
    seq_len: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_samples <= 0 or self.seq_len <= 0:
            raise QuantstudyError("calibration needs a positive number of samples and sequence length")
        if self.source not in SOURCES[:-1] and not self.source.startswith("jsonl:"):
            raise QuantstudyError(f"unknown calibration source '{self.source}'; choose one of: {', '.join(SOURCES)}")

    def record(self) -> dict:
        return asdict(self)


def _render(doc, tokenizer) -> list[int]:
    if isinstance(doc, list):  # a conversation
        if not tokenizer.chat_template:
            text = "\n\n".join(m["content"] for m in doc)
            return tokenizer(text, add_special_tokens=False)["input_ids"]
        return list(tokenizer.apply_chat_template(doc, tokenize=True, return_dict=True)["input_ids"])
    return tokenizer(doc, add_special_tokens=False)["input_ids"]


def load_calibration(spec: CalibrationSpec, tokenizer) -> torch.Tensor:
    """Calibration token ids, shape [num_samples, seq_len]."""
    rng = random.Random(spec.seed)
    if spec.source == "random":
        special = set(tokenizer.all_special_ids)
        vocab = [i for i in range(len(tokenizer)) if i not in special]
        return torch.tensor([[rng.choice(vocab) for _ in range(spec.seq_len)] for _ in range(spec.num_samples)])
    docs = pool_documents(spec.source)
    rng.shuffle(docs)
    eos = tokenizer.eos_token_id
    need = spec.num_samples * spec.seq_len
    stream: list[int] = []
    for _ in range(64):  # cycle through a small pool rather than fail
        for doc in docs:
            stream.extend(_render(doc, tokenizer))
            stream.append(eos)
            if len(stream) >= need:
                return torch.tensor(stream[:need]).reshape(spec.num_samples, spec.seq_len)
    raise QuantstudyError(f"calibration source '{spec.source}' has too little text for {need} tokens")
