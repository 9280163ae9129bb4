"""A task from the user's own lm-eval YAML and data (`--task-file`), run on our engines.

The paper used tasks whose data cannot ship here (TruthfulQA mc2, GPQA, MMLU-Pro, BBH, MuSR
...). A user who has the data writes (or copies) lm-eval's task YAML with `dataset_path:
json` (or `arrow`, `parquet`, `csv`) and `dataset_kwargs.data_files` pointing at local files --
`include:` of lm-eval's own YAML by absolute path keeps its prompt, choices and metric -- and
passes it as `--task-file`. lm-eval builds every request exactly as it would (its templates,
its few-shot sampler, its `process_docs`); we answer them on our engine (in process or
served: log-likelihood for `multiple_choice` / `loglikelihood`, greedy generation for
`generate_until`), then lm-eval's own filters and `process_results` score each document.
The item's score is the YAML's first metric (e.g. TruthfulQA mc2's `acc`, a probability mass).

Nothing is downloaded: `HF_DATASETS_OFFLINE` is set, so a YAML naming a hub dataset fails in
one line. Stored items are versioned by a hash of the YAML and its local data files.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import yaml

from quantstudy.errors import QuantstudyError
from quantstudy.inference.requests import GenerateRequest, LoglikRequest
from quantstudy.items import ItemResult

MAX_GEN_TOKS = 256     # lm-eval's default max_gen_toks


@functools.lru_cache(maxsize=16)
def load(path: str):
    """lm-eval's Task for the YAML at `path` (which names it with `task:`)."""
    file = Path(path)
    if not file.is_file():
        raise QuantstudyError(f"--task-file {path}: not found")
    try:
        raw = yaml.load(file.read_text(encoding="utf-8"), Loader=_TaskYamlLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise QuantstudyError(f"--task-file {path}: not a YAML task file ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("task"), str):
        raise QuantstudyError(f"--task-file {path}: an lm-eval task YAML needs a 'task:' name")
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(file.parent), include_defaults=False)
    try:
        loaded = manager.load([raw["task"]]) if hasattr(manager, "load") else None
        task = _only_task(loaded, raw["task"]) if loaded is not None else None
    except Exception as exc:   # lm-eval and datasets raise anything; the user needs one line
        raise QuantstudyError(f"--task-file {path}: lm-eval could not build task {raw['task']!r}: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if task is None:
        raise QuantstudyError(f"--task-file {path}: lm-eval found no task {raw['task']!r} there")
    if task.OUTPUT_TYPE not in ("multiple_choice", "loglikelihood", "generate_until"):
        raise QuantstudyError(f"--task-file {path}: output_type {task.OUTPUT_TYPE!r} is not supported "
                              "(multiple_choice, loglikelihood and generate_until are)")
    task.set_fewshot_seed(1234)   # as lm-eval's simple_evaluate
    return task


class _TaskYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader reading lm-eval's `!function` tags as plain text (we only need `task:`)."""


_TaskYamlLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def _only_task(loaded, name: str):
    tasks = loaded.get("tasks", loaded) if isinstance(loaded, dict) else {}
    for key, value in tasks.items():
        if getattr(value, "config", None) is not None and str(key).split(":")[-1] == name:
            return value
    return None


def version(path: str) -> str:
    """A hash of the YAML and the local data files it names: new data, new stored items."""
    task = load(path)
    digest = hashlib.sha256(Path(path).read_bytes())
    files = (task.config.dataset_kwargs or {}).get("data_files") or {}
    for entry in sorted(files.items()) if isinstance(files, dict) else [("", files)]:
        for f in entry[1] if isinstance(entry[1], (list, tuple)) else [entry[1]]:
            if f and Path(f).is_file():
                digest.update(Path(f).read_bytes())
    return f"lmeval-file:{task.config.task}:{digest.hexdigest()[:16]}"


def load_docs(path: str, limit: int | None) -> list[dict]:
    """(doc id, doc) in lm-eval's evaluation order, the first `limit` as its --limit."""
    task = load(path)
    docs = list(task.eval_docs)
    return [{"id": str(i), "doc": d} for i, d in enumerate(docs[:limit] if limit is not None else docs)]


def run(path: str, engine, items: list[dict], limit: int | None) -> list[ItemResult]:
    """Build lm-eval's requests for the first `limit` documents (its sampler advances in that
    order), answer the wanted ones on `engine`, score them with lm-eval's filters and metric."""
    task = load(path)
    wanted = {int(it["id"]) for it in items}
    upto = max(wanted) + 1 if wanted else 0
    task.build_all_requests(limit=max(upto, limit or 0), rank=0, world_size=1)
    instances = [inst for inst in task.instances if inst.doc_id in wanted]
    loglik = [i for i in instances if i.request_type == "loglikelihood"]
    generate = [i for i in instances if i.request_type == "generate_until"]
    if len(loglik) + len(generate) != len(instances):
        kinds = sorted({i.request_type for i in instances} - {"loglikelihood", "generate_until"})
        raise QuantstudyError(f"task file {task.config.task}: request type(s) {', '.join(kinds)} not supported")
    if loglik:
        answers = engine.loglikelihood([LoglikRequest(*i.arguments) for i in loglik])
        for inst, a in zip(loglik, answers):
            inst.resps = [(a.logprob, a.is_greedy)]
    if generate:
        requests = []
        for inst in generate:
            context, kwargs = inst.arguments
            until = kwargs.get("until") or ()
            until = (until,) if isinstance(until, str) else tuple(until)
            requests.append(GenerateRequest(context, int(kwargs.get("max_gen_toks", MAX_GEN_TOKS)), until))
        for inst, g in zip(generate, engine.generate(requests)):
            inst.resps = [g.text]
    task._instances = instances            # lm-eval filters what the task holds: only what ran
    task.apply_filters()
    key = next(iter(instances[0].filtered_resps)) if instances else "none"
    metric = task.config.metric_list[0]["metric"] if task.config.metric_list else "acc"
    by_doc: dict[int, list] = {}
    for inst in instances:
        by_doc.setdefault(inst.doc_id, []).append(inst)
    out = []
    for it in items:
        group = sorted(by_doc[int(it["id"])], key=lambda i: i.idx)
        metrics = task.process_results(group[0].doc, [i.filtered_resps[key] for i in group])
        if metric not in metrics:
            raise QuantstudyError(f"task file {task.config.task}: process_results gave {sorted(metrics)}, "
                                  f"not the YAML's first metric {metric!r}")
        score = float(metrics[metric])
        out.append(ItemResult(task=task.config.task, item_id=it["id"], prediction=str(group[0].filtered_resps[key])[:200],
                              correct=score >= 0.5, score=score,
                              extra={"metrics": {k: float(v) for k, v in metrics.items()
                                                 if isinstance(v, (int, float))}}))
    return out
