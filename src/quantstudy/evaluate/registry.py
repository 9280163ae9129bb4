"""Every evaluation task behind one small interface: load items, name them, run them.

A `TaskSpec` knows how to list its items for a given limit (`load`), the stable id of each
(`item_id`) and how to score a subset of them on one engine (`run`). That is what lets the
runner skip items already in the results store and compute only the rest. The task
modules themselves follow lm-eval's definitions; this file only adapts them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from quantstudy.errors import QuantstudyError
from quantstudy.evaluate.sampling import CODE, REASONING, run_sampled
from quantstudy.items import ItemResult


@dataclass
class EvalContext:
    """What tasks may need beyond the engine they run on: tokenizer, limits, templates, and for
    a variant the baseline's engine (the KL task compares against it)."""

    tokenizer: Any
    baseline_engine: Any = None   # set for variants
    limit: int | None = None
    seed: int = 0
    chat: str = "auto"            # "auto" (instruction tasks only), "on" (every generative task), "off"
    max_context: int = 2048
    ppl_seq_len: int = 512
    batch_size: int = 8
    task_limits: dict = field(default_factory=dict)   # task -> its own limit (evaluate until decided)
    sampling: Any = None          # `sampling.Sampling` for generative tasks; None: greedy
    fewshot: str = "paper"        # multiple choice: "paper" (Leaderboard v1's shots) or "zero"

    def apply_chat(self, task: str):
        """The chat-template wrapper for a generative task, or None for a raw prompt."""
        if self.chat == "off" or (self.chat == "auto" and task not in CHAT_BY_DEFAULT):
            return None
        if not getattr(self.tokenizer, "chat_template", None):
            return None

        def wrap(text: str) -> str:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True)
        return wrap


# Tasks written as chat requests; GSM8K few-shot and HumanEval completion are raw-prompt
# formats in lm-eval, multiple choice is scored by likelihood.
CHAT_BY_DEFAULT = {"ifeval", "ruler", "ruler_mk", "ruler_mv", "ruler_mq", "ruler_vt"}
# RULER's other synthetic tasks (tasks/ruler_synthetic.py); `ruler` stays the single needle.
RULER_SYNTHETIC = ("ruler_mk", "ruler_mv", "ruler_mq", "ruler_vt")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    version: str
    load: Callable[[EvalContext], list]
    item_id: Callable[[Any], str]
    run: Callable[[Any, list, EvalContext], list[ItemResult]]
    metric: str = "accuracy"        # "accuracy" (higher better, recovery), "perplexity", "divergence"
    needs_baseline: bool = False    # only meaningful for a variant (KL)
    seq_len: Callable[[EvalContext], int] | None = None   # window length, when not ctx.ppl_seq_len
    sampling: str | None = None     # "code" / "reasoning": the task honours ctx.sampling (`sampling`)
    shots: Callable[[EvalContext], int] | None = None   # few-shot count: `version` has a {shots} field

    def version_for(self, ctx: EvalContext) -> str:
        chat = "chat" if ctx.apply_chat(self.name) else "raw"
        length = self.seq_len(ctx) if self.seq_len else ctx.ppl_seq_len
        extra = f"|len{length}" if self.metric in ("perplexity", "divergence") else ""
        # sampled runs get their own version (greedy ones keep theirs: the tag is then empty)
        sampled = ctx.sampling.tag(self.sampling) if ctx.sampling is not None else ""
        version = self.version.format(shots=self.shots(ctx)) if self.shots else self.version
        return f"{version}|{chat}{extra}{sampled}"


def _mc(name: str) -> TaskSpec:
    from quantstudy.evaluate.tasks import multiple_choice as mc

    task = mc.MC_TASKS[name]

    def shots(ctx: EvalContext) -> int:
        return mc.PAPER_SHOTS[name] if ctx.fewshot == "paper" else 0
    # (0-shot versions are what they were before shots became a setting: stored items stay valid)
    return TaskSpec(name, name + "-{shots}shot-lmeval0.4.13", lambda ctx: task.load_docs(ctx.limit),
                    lambda doc: str(doc["id"]), lambda engine, docs, ctx: mc.score_docs(task, docs, engine, shots(ctx)),
                    shots=shots)


def _generation(make_requests, score, item_id, kind: str):
    """A generative task's `run`: greedy, or every draw of `kind` (`sampling`) scored and combined."""
    def run(engine, docs, ctx):
        reqs = make_requests(docs, ctx)
        if ctx.sampling is not None and ctx.sampling.draws(kind):
            return run_sampled(engine, docs, [item_id(d) for d in docs], reqs, score, ctx.sampling, kind)
        return score(docs, engine.generate(reqs))
    return run


def _gsm8k() -> TaskSpec:
    from quantstudy.evaluate.tasks import gsm8k

    run = _generation(lambda docs, ctx: gsm8k.requests(docs, apply_chat=ctx.apply_chat("gsm8k")), gsm8k.score,
                      lambda d: str(d["id"]), REASONING)
    return TaskSpec("gsm8k", gsm8k.VERSION, lambda ctx: gsm8k.load_docs(ctx.limit), lambda d: str(d["id"]), run,
                    sampling=REASONING)


def _humaneval() -> TaskSpec:
    from quantstudy.evaluate.tasks import humaneval

    # pass@1 from N samples per problem where sampled
    run = _generation(lambda problems, ctx: humaneval.requests(problems), humaneval.score, lambda p: p["task_id"],
                      CODE)
    return TaskSpec("humaneval", "humaneval-pass@1-greedy-v1", lambda ctx: humaneval.load_problems(ctx.limit),
                    lambda p: p["task_id"], run, sampling=CODE)


def _math(level: str | None = None) -> TaskSpec:
    from quantstudy.evaluate.tasks import minerva_math as mm

    name = "math_hard" if level else "math"

    def score(docs, generations):
        return mm.score(docs, generations, task=name)

    # --seeds K, as GSM8K
    run = _generation(lambda docs, ctx: mm.requests(docs, apply_chat=ctx.apply_chat(name)), score,
                      lambda d: d["id"], REASONING)
    # `limit` is per subject, as lm-eval's --limit on each minerva_math subtask
    return TaskSpec(name, mm.VERSION + ("|level5" if level else ""), lambda ctx: mm.load_docs(ctx.limit, level),
                    lambda d: d["id"], run, sampling=REASONING)


def _mmlu_cot() -> TaskSpec:
    from quantstudy.evaluate.tasks import mmlu_cot

    run = _generation(lambda docs, ctx: mmlu_cot.requests(docs, apply_chat=ctx.apply_chat("mmlu_cot")),
                      mmlu_cot.score, lambda d: d["id"], REASONING)
    # `limit` is per subject, as lm-eval's --limit on each subtask
    return TaskSpec("mmlu_cot", mmlu_cot.VERSION, lambda ctx: mmlu_cot.load_docs(ctx.limit), lambda d: d["id"], run,
                    sampling=REASONING)


def _mbpp() -> TaskSpec:
    from quantstudy.evaluate.tasks import mbpp

    # pass@1 from N samples, as HumanEval
    run = _generation(lambda docs, ctx: mbpp.requests(docs, apply_chat=ctx.apply_chat("mbpp")), mbpp.score,
                      lambda d: d["id"], CODE)
    return TaskSpec("mbpp", mbpp.VERSION, lambda ctx: mbpp.load_problems(ctx.limit), lambda d: d["id"], run,
                    sampling=CODE)


def _ifeval() -> TaskSpec:
    from quantstudy.evaluate.tasks import ifeval

    def run(engine, prompts, ctx):
        gens = engine.generate(ifeval.requests(prompts, apply_chat=ctx.apply_chat("ifeval")))
        return ifeval.score(prompts, [g.text for g in gens], [g.num_tokens for g in gens])
    return TaskSpec("ifeval", "ifeval-quantstudy130-v1", lambda ctx: ifeval.load_prompts(ctx.limit),
                    lambda p: str(p["key"]), run)


def _ruler() -> TaskSpec:
    from quantstudy.evaluate.tasks import ruler

    def load(ctx):
        items = ruler.build_items(ctx.tokenizer, ctx.max_context, seed=ctx.seed)
        return items[:ctx.limit] if ctx.limit is not None else items

    def run(engine, items, ctx):
        return ruler.score(items, engine.generate(ruler.requests(items, apply_chat=ctx.apply_chat("ruler"))))
    return TaskSpec("ruler", ruler.VERSION, load, lambda item: item["id"], run)


def _ruler_synthetic(name: str) -> TaskSpec:
    from quantstudy.evaluate.tasks import ruler_synthetic as rs

    def load(ctx):
        items = rs.build_items(name, ctx.tokenizer, ctx.max_context, seed=ctx.seed)
        return items[:ctx.limit] if ctx.limit is not None else items

    def run(engine, items, ctx):
        return rs.score(name, items, engine.generate(rs.requests(name, items, apply_chat=ctx.apply_chat(name))))
    return TaskSpec(name, rs.FAMILIES[name].version, load, lambda item: item["id"], run)


def heldout_window_items(ctx: EvalContext, seq_len: int | None = None, source: str = "wikitext"):
    from quantstudy.data.windows import heldout_windows

    windows = heldout_windows(ctx.tokenizer, seq_len or ctx.ppl_seq_len, source)
    n = len(windows) if ctx.limit is None else min(len(windows), ctx.limit)
    return [(str(i), windows[i]) for i in range(n)]


def _stack(items):
    import torch

    return torch.stack([w for _, w in items])


def _ppl() -> TaskSpec:
    from quantstudy.evaluate.perplexity import perplexity_items

    def run(engine, items, ctx):
        results = perplexity_items(engine, _stack(items), ctx.batch_size)
        return [_renamed(r, i) for r, (i, _) in zip(results, items)]
    return TaskSpec("ppl", "wikitext-heldout-v1", heldout_window_items, lambda item: item[0], run, metric="perplexity")


# Long-context perplexity: what an FP8 KV cache (issue 18) changes grows with the number of
# cached tokens each query attends over, which 512-token windows hardly exercise. Held-out
# WikiText is ~3k tokens (one 2048-token window), so these windows are cut from LAMBADA's
# held-out passages (~120k tokens with SmolLM2's tokenizer, 59 windows), never calibrated on.
LONG_PPL_SEQ_LEN = 2048


def _long_len(ctx: EvalContext) -> int:
    return min(LONG_PPL_SEQ_LEN, ctx.max_context)


def _ppl_long() -> TaskSpec:
    from quantstudy.evaluate.perplexity import perplexity_items

    def run(engine, items, ctx):
        results = perplexity_items(engine, _stack(items), max(1, ctx.batch_size // 4), task="ppl_long")
        return [_renamed(r, i) for r, (i, _) in zip(results, items)]
    return TaskSpec("ppl_long", "lambada-heldout-v1", lambda ctx: heldout_window_items(ctx, _long_len(ctx), "lambada"),
                    lambda item: item[0], run, metric="perplexity", seq_len=_long_len)


def _kl() -> TaskSpec:
    from quantstudy.evaluate.perplexity import kl_items

    def run(engine, items, ctx):
        results = kl_items(ctx.baseline_engine, engine, _stack(items), ctx.batch_size)
        return [_renamed(r, i) for r, (i, _) in zip(results, items)]
    return TaskSpec("kl", "wikitext-heldout-v1", heldout_window_items, lambda item: item[0], run, metric="divergence",
                    needs_baseline=True)


def _renamed(result: ItemResult, item_id: str) -> ItemResult:
    from dataclasses import replace

    return replace(result, item_id=item_id)


_BUILDERS = {"mmlu": lambda: _mc("mmlu"), "arc_challenge": lambda: _mc("arc_challenge"),
             "hellaswag": lambda: _mc("hellaswag"), "winogrande": lambda: _mc("winogrande"),
             "gsm8k": _gsm8k, "humaneval": _humaneval, "ifeval": _ifeval, "ruler": _ruler,
             "math": _math, "math_hard": lambda: _math("Level 5"), "mbpp": _mbpp, "mmlu_cot": _mmlu_cot,
             "ppl": _ppl, "ppl_long": _ppl_long, "kl": _kl,
             **{name: (lambda name=name: _ruler_synthetic(name)) for name in RULER_SYNTHETIC}}
TASK_NAMES = tuple(_BUILDERS)


_FILE_TASKS: dict[str, TaskSpec] = {}   # tasks registered from users' lm-eval YAMLs (`--task-file`)


def register_task_file(path: str) -> str:
    """Make the lm-eval task in the YAML at `path` known by its `task:` name; returns the name."""
    import os

    from quantstudy.evaluate.tasks import lmeval_file

    path = os.path.abspath(path)
    task = lmeval_file.load(path)
    name = task.config.task
    if name in _BUILDERS:
        raise QuantstudyError(f"--task-file {path}: task name {name!r} is one of ours; rename it in the YAML")
    _FILE_TASKS[name] = TaskSpec(name, lmeval_file.version(path), lambda ctx: lmeval_file.load_docs(path, ctx.limit),
                                 lambda item: item["id"],
                                 lambda engine, items, ctx: lmeval_file.run(path, engine, items, ctx.limit))
    return name


def get_task(name: str) -> TaskSpec:
    if name in _FILE_TASKS:
        return _FILE_TASKS[name]
    if name not in _BUILDERS:
        raise QuantstudyError(f"unknown task {name!r}; known: {', '.join(TASK_NAMES)}")
    return _BUILDERS[name]()


def parse_tasks(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise QuantstudyError("no tasks given")
    for name in names:
        get_task(name)   # raises with the known names
    return list(dict.fromkeys(names))
