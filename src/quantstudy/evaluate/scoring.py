"""Scoring one model's tasks on one engine through the results store: the step the in-process
and the served runs share (`runner`, `served_runs`)."""

from __future__ import annotations

import dataclasses

from quantstudy.errors import QuantstudyError
from quantstudy.evaluate.registry import EvalContext, get_task
from quantstudy.store import ResultStore

CHUNK = 32   # items per store transaction


def make_context(tokenizer, settings, max_context: int, baseline_engine=None) -> EvalContext:
    """The tasks' context for one model from `runner.EvalSettings`."""
    return EvalContext(tokenizer=tokenizer, baseline_engine=baseline_engine, limit=settings.limit,
                       seed=settings.seed, chat=settings.chat, max_context=max_context,
                       ppl_seq_len=settings.ppl_seq_len, batch_size=min(settings.batch_size, 8),
                       task_limits=dict(settings.task_limits), sampling=getattr(settings, "sampling", None),
                       fewshot=getattr(settings, "fewshot", "paper"))


def score_tasks(store: ResultStore, key: str, engine, ctx: EvalContext, tasks, progress=None,
                label: str = "") -> dict[str, list]:
    """Every task's items for one model on one engine: stored ones read back, missing ones
    computed and stored."""
    out = {}
    base_ctx = ctx
    for name in tasks:
        spec = get_task(name)
        # a task evaluated in rounds (until decided) has its own limit
        ctx = dataclasses.replace(base_ctx, limit=base_ctx.task_limits[name]) if name in base_ctx.task_limits \
            else base_ctx
        if spec.needs_baseline and ctx.baseline_engine is None:
            continue
        version = spec.version_for(ctx)
        items = spec.load(ctx)
        ids = [spec.item_id(item) for item in items]
        if len(set(ids)) != len(ids):
            raise QuantstudyError(f"task {name}: item ids are not unique")
        done = store.done_items(key, name, version)
        todo = [item for item, i in zip(items, ids) if i not in done]
        bar = progress.add_task(f"{label}{name}", total=len(items), completed=len(items) - len(todo)) if progress else None
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start:start + CHUNK]
            store.put_items(key, version, spec.run(engine, chunk, ctx))
            if progress:
                progress.advance(bar, len(chunk))
        if progress:
            progress.remove_task(bar)
        out[name] = store.get_items(key, name, version, ids)
        if len(out[name]) != len(ids):
            raise QuantstudyError(f"task {name}: {len(ids) - len(out[name])} items missing after scoring")
    return out
