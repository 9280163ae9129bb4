"""The served side of an evaluation: each model on vLLM in turn, and what the engine adds.

For each served model (baseline first) a server is started, every task is scored through the
`VLLMEngine` into the store under the model's served identity (files, engine version,
device, dtype), and its top-k scores over the fidelity sequences are kept. The served
baseline also keeps its top-k over the perplexity windows (the reference of the served
variants' KL, read after its server is gone) and is scored a second time one request at a
time: the same model and kernels at another batching, the engine's own noise.

Then, while each in-process twin is loaded (`compare_twin`), its full distributions are
compared with the served model's stored scores. `report` turns all of it into:

- `served_vs_emulated[name]`: per accuracy task the served score minus the emulated one with a
  paired interval and the flip rate; fidelity (KL, top-1, ΔNLL; prefill and decode apart);
- `noise_floor`: the same for the served BF16 baseline against the in-process one (`engine`)
  and against its own one-at-a-time run (`batching`), and per task the floor -- the larger
  |accuracy difference| of the two -- that a variant's loss must exceed to be called real.
"""

from __future__ import annotations

import torch

from quantstudy.evaluate import fidelity, stats
from quantstudy.evaluate.registry import get_task, heldout_window_items
from quantstudy.evaluate.sampling import GREEDY
from quantstudy.evaluate.scoring import make_context, score_tasks
from quantstudy.inference.requests import WindowScores
from quantstudy.inference.served import served
from quantstudy.inference.vllm_engine import TOP_K
from quantstudy.items import ItemResult

KL_REFERENCE = "kl-reference"
FIDELITY_VERSION = f"v1|n{fidelity.N_SEQUENCES}|new{fidelity.MAX_NEW_TOKENS}"
SERIAL = "serial"   # the baseline's second, one-request-at-a-time run


class StoredScores:
    """Window scores kept in the store, answered as an engine would (`window_scores`)."""

    def __init__(self, rows: dict[tuple[int, ...], WindowScores]):
        self.rows = rows

    def window_scores(self, windows, batch_size: int = 8):
        for start in range(0, len(windows), batch_size):
            batch = [self.rows[tuple(w.tolist())] for w in windows[start:start + batch_size]]
            yield WindowScores(torch.cat([b.target for b in batch]), torch.cat([b.top_ids for b in batch]),
                               torch.cat([b.top_logprobs for b in batch]))


class ServedRuns:
    def __init__(self, store, tokenizer, settings, plan, folders: dict, max_context: int, sequences, progress=None):
        self.store, self.tokenizer, self.settings, self.plan = store, tokenizer, settings, plan
        self.folders, self.max_context, self.seqs, self.progress = folders, max_context, sequences, progress
        self.results: dict[str, dict] = {}      # "name@vllm" (and "baseline@vllm-serial") -> task -> items
        self.records: dict[str, dict] = {}
        self.keys: dict[str, str] = {}
        self.kl_reference: StoredScores | None = None
        self.fidelity: dict[str, list] = {}     # name -> per-sequence fidelity of served to its twin

    # ---- serving ---------------------------------------------------------------------------

    def model_len(self) -> int:
        """The served context the tasks need: 2048 (vLLM's KV reservation and start-up stay
        small) unless a long-context task is asked for -- RULER builds prompts at the model's
        context, `ppl_long` scores 2048-token windows (plus the one token a request generates)."""
        from quantstudy.evaluate.registry import LONG_PPL_SEQ_LEN

        if any(task.startswith("ruler") for task in self.settings.tasks):   # ruler and ruler_mk etc.
            return self.max_context
        if "ppl_long" in self.settings.tasks:
            return min(self.max_context, LONG_PPL_SEQ_LEN + 256)
        return 2048

    def _context(self, baseline_engine=None):
        return make_context(self.tokenizer, self.settings, self.max_context, baseline_engine)

    def run(self, names: list[str]) -> None:
        for name in names:
            folder = self.folders[name]
            with served(folder, self.tokenizer, url=self.plan.urls.get(name), python=self.plan.python,
                        concurrency=self.settings.concurrency, log_dir=self.plan.log_dir,
                        max_model_len=self.model_len(),
                        prefix_cache=self.settings.prefix_cache,
                        seeded_sampling=self.settings.sampling != GREEDY) as (engine, record):
                key = f"{self.store.fingerprint(folder)}:vllm:{record.version}:{record.dtype}:{record.device}:{record.how}"
                run = f"{name}@vllm"
                self.keys[run], self.records[run] = key, record.to_dict()
                if name == "baseline" and "kl" in self.settings.tasks:
                    self._keep_kl_reference(engine, key)
                ctx = self._context(None if name == "baseline" else self.kl_reference)
                self.results[run] = score_tasks(self.store, key, engine, ctx, self.settings.tasks, self.progress,
                                                label=f"{name} (vLLM) ")
                if self.settings.twin:
                    self._keep_sequence_scores(engine, key)
                if name == "baseline" and self.settings.twin:   # the same server, one request at a time
                    engine.concurrency, engine.prompts_per_call = 1, 1
                    serial_key, serial = f"{key}:{SERIAL}", f"baseline@vllm-{SERIAL}"
                    self.keys[serial], self.records[serial] = serial_key, {**record.to_dict(), "concurrency": 1}
                    tasks = [t for t in self.settings.tasks if get_task(t).metric != "divergence"]
                    self.results[serial] = score_tasks(self.store, serial_key, engine, self._context(), tasks,
                                                       self.progress, label="baseline (vLLM, one at a time) ")
                    self._keep_sequence_scores(engine, serial_key)

    def _keep_kl_reference(self, engine, key: str) -> None:
        """The served baseline's top-k over the KL windows, stored (a resumed run reads them)."""
        windows = heldout_window_items(self._context())
        done = self.store.done_items(key, KL_REFERENCE, self._window_version())
        todo = [(i, w) for i, w in windows if i not in done]
        for start in range(0, len(todo), 8):
            chunk = todo[start:start + 8]
            scores = next(iter(engine.window_scores(torch.stack([w for _, w in chunk]), len(chunk))))
            self.store.put_items(key, self._window_version(), [
                ItemResult(KL_REFERENCE, i, "", True, 1.0, tokens=len(w) - 1, extra=fidelity.encode_scores(scores, r))
                for r, (i, w) in enumerate(chunk)])
        items = self.store.get_items(key, KL_REFERENCE, self._window_version(), [i for i, _ in windows])
        self.kl_reference = StoredScores({tuple(w.tolist()): fidelity.decode_scores(item.extra)
                                          for (_, w), item in zip(windows, items)})

    def _window_version(self) -> str:
        return f"wikitext-heldout-v1|len{self.settings.ppl_seq_len}|top{TOP_K}"

    def _keep_sequence_scores(self, engine, key: str) -> None:
        done = self.store.done_items(key, fidelity.SCORES_TASK, FIDELITY_VERSION)
        todo = [s for s in self.seqs if s[0] not in done]
        if todo:
            self.store.put_items(key, FIDELITY_VERSION, fidelity.stored_scores_items(engine, todo))

    def _sequence_scores(self, key: str) -> dict[str, WindowScores]:
        items = self.store.get_items(key, fidelity.SCORES_TASK, FIDELITY_VERSION)
        return {item.item_id: fidelity.decode_scores(item.extra) for item in items}

    # ---- comparisons -----------------------------------------------------------------------

    def compare_twin(self, name: str, hf_engine, hf_key: str) -> None:
        """Fidelity of the served model to its in-process twin (loaded now): the twin's full
        distribution against the served top-k, per sequence, stored under the twin."""
        served_key = self.keys.get(f"{name}@vllm")
        if served_key is None:
            return
        task = f"fidelity-vs:{served_key}"
        done = self.store.done_items(hf_key, task, FIDELITY_VERSION)
        todo = [s for s in self.seqs if s[0] not in done]
        if todo:
            self.store.put_items(hf_key, FIDELITY_VERSION,
                                 fidelity.pair_items(hf_engine, self._sequence_scores(served_key), todo, task))
        self.fidelity[name] = self.store.get_items(hf_key, task, FIDELITY_VERSION)

    def report(self, results: dict, seed: int = 0) -> dict:
        out = {"served_vs_emulated": {}, "noise_floor": {}}
        for run in [r for r in results if r.endswith("@vllm")]:
            name = run.split("@")[0]
            twin = results.get(f"{name}@hf")
            if twin is None:
                continue
            entry = {"tasks": _task_gaps(twin, results[run], seed),
                     "fidelity": _summary(self.fidelity.get(name), seed)}
            (out["noise_floor"].__setitem__("engine", entry) if name == "baseline"
             else out["served_vs_emulated"].__setitem__(name, entry))
        serial = results.get(f"baseline@vllm-{SERIAL}")
        if serial is not None and "baseline@vllm" in results:
            a, b = self._sequence_scores(self.keys["baseline@vllm"]), self._sequence_scores(self.keys[f"baseline@vllm-{SERIAL}"])
            pairs = fidelity.pair_items(a, b, self.seqs, "batching")
            out["noise_floor"]["batching"] = {"tasks": _task_gaps(results["baseline@vllm"], serial, seed),
                                              "fidelity": _summary(pairs, seed)}
        floor = {}
        for part in out["noise_floor"].values():
            for task, gap in part["tasks"].items():
                floor[task] = max(floor.get(task, 0.0), abs(gap["difference"]))
        out["floor"] = floor
        return out


def _summary(items, seed: int):
    if not items:
        return None
    s = fidelity.summarize(items, seed)
    return {"n": s.n, "prefill": s.prefill, "decode": s.decode, "kl": "top-k lower bound"}


def _task_gaps(reference: dict, other: dict, seed: int) -> dict:
    """Per accuracy task: other minus reference, paired interval, flip rate."""
    out = {}
    for task, ref_items in reference.items():
        if get_task(task).metric != "accuracy" or task not in other:
            continue
        c = stats.compare_task(ref_items, other[task], seed=seed)
        out[task] = {"n": c.n, "reference": c.baseline_mean, "other": c.variant_mean, "difference": c.difference,
                     "difference_ci": list(c.difference_ci), "flip_rate": fidelity.flip_rate(ref_items, other[task])}
    return out
