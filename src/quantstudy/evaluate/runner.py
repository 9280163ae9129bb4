"""Evaluate a baseline and its quantized variants on the same items, through the results store.

For each model and task: list the task's items for the limit, ask the store which are
done (keyed by the model's file fingerprint, dtype, task version and settings), score
only the rest in chunks (each chunk one transaction: a kill loses at most the chunk in
flight), then read every item back from the store. Comparisons are computed from the
stored items alone, so a rerun reproduces the same report without touching a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer

from quantstudy.errors import QuantstudyError
from quantstudy.evaluate import summary
from quantstudy.evaluate.registry import EvalContext, get_task
from quantstudy.inference.hf_engine import HFEngine
from quantstudy.inference.loading import load_for_inference, load_model
from quantstudy.store import ResultStore

CHUNK = 32   # items per store transaction


@dataclass
class EvalSettings:
    tasks: tuple[str, ...]
    limit: int | None = None
    chat: str = "auto"
    seed: int = 0
    batch_size: int = 16
    dtype: str = "float32"
    ppl_seq_len: int = 512

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise QuantstudyError(f"--limit must be at least 1, got {self.limit}")
        if self.chat not in ("auto", "on", "off"):
            raise QuantstudyError(f"--chat-template must be auto, on or off, not {self.chat!r}")
        for name in self.tasks:
            get_task(name)


def _max_context(model, tokenizer) -> int:
    n = getattr(model.config, "max_position_embeddings", None) or getattr(tokenizer, "model_max_length", 2048)
    return int(min(n, 1 << 17))


def run_model(store: ResultStore, key: str, model, tokenizer, settings: EvalSettings, baseline_engine=None,
              progress=None) -> tuple[dict[str, list], HFEngine]:
    """Every task's items for one model: stored ones read back, missing ones computed and
    stored. Returns them with the model's engine (a variant's KL reads the baseline's)."""
    engine = HFEngine(model, tokenizer, batch_size=settings.batch_size, progress=False)
    ctx = EvalContext(tokenizer=tokenizer, baseline_engine=baseline_engine, limit=settings.limit,
                      seed=settings.seed, chat=settings.chat, max_context=_max_context(model, tokenizer),
                      ppl_seq_len=settings.ppl_seq_len, batch_size=min(settings.batch_size, 8))
    out = {}
    for name in settings.tasks:
        spec = get_task(name)
        if spec.needs_baseline and baseline_engine is None:
            continue
        version = spec.version_for(ctx)
        items = spec.load(ctx)
        ids = [spec.item_id(item) for item in items]
        if len(set(ids)) != len(ids):
            raise QuantstudyError(f"task {name}: item ids are not unique")
        done = store.done_items(key, name, version)
        todo = [item for item, i in zip(items, ids) if i not in done]
        task_bar = progress.add_task(f"{name}", total=len(items), completed=len(items) - len(todo)) if progress else None
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start:start + CHUNK]
            store.put_items(key, version, spec.run(engine, chunk, ctx))
            if progress:
                progress.advance(task_bar, len(chunk))
        if progress:
            progress.remove_task(task_bar)
        out[name] = store.get_items(key, name, version, ids)
        if len(out[name]) != len(ids):
            raise QuantstudyError(f"task {name}: {len(ids) - len(out[name])} items missing after scoring")
    return out, engine


def evaluate_models(baseline: str, variants: list[str | Path], settings: EvalSettings, store_path: str | Path,
                    progress=None, allow_pickle: bool = False) -> dict:
    """The evaluate stage: per-item results in the store, comparisons in the returned report."""
    variant_dirs = [Path(v) for v in variants]
    for folder in variant_dirs:
        if not (folder / "config.json").is_file():
            raise QuantstudyError(f"variant {folder} is not a quantized checkpoint folder (no config.json)")
    names = [folder.name for folder in variant_dirs]
    if len(set(names)) != len(names):
        raise QuantstudyError("variant folders must have distinct names (they label the results)")
    with ResultStore(store_path) as store:
        base_model, tokenizer, base_folder = load_model(baseline, dtype=settings.dtype, allow_pickle=allow_pickle)
        base_key = f"{store.fingerprint(base_folder)}:{settings.dtype}"
        base_items, base_engine = run_model(store, base_key, base_model, tokenizer, settings, progress=progress)
        results = {"baseline": base_items}
        models = {"baseline": {"ref": str(baseline), "key": base_key}}
        for name, folder in zip(names, variant_dirs):
            variant = load_for_inference(folder, settings.dtype)
            model = variant.load()
            if AutoTokenizer.from_pretrained(folder, trust_remote_code=False).get_vocab() != tokenizer.get_vocab():
                raise QuantstudyError(f"variant {name} has a different tokenizer from the baseline")
            key = f"{store.fingerprint(folder)}:{variant.how}:{settings.dtype}"
            results[name], _ = run_model(store, key, model, tokenizer, settings, baseline_engine=base_engine,
                                         progress=progress)
            models[name] = {"ref": str(folder), "key": key, "scheme": variant.scheme.label if variant.scheme else None}
            del model
    report = summary.compare(results, names, seed=settings.seed)
    report["models"] = models
    report["settings"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(settings).items()}
    return report
