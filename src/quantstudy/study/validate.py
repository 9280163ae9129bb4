"""Checking a study YAML against the config dataclasses, with the line of every value.

`Doc` composes the YAML (`yaml.compose` keeps each node's position, which `safe_load`
drops) into plain values plus a map from field path to line; `Checker` fills a config
dataclass from a mapping, refusing unknown fields (with a did-you-mean) and checking each
value with a method named `_<Class>_<field>`. Every failure is a one-line QuantstudyError:
"study.yaml line 7: variants[2].scheme: unknown scheme 'w5a5'; choose one of: ...".
"""

from __future__ import annotations

import dataclasses
import difflib
import re

from quantstudy.errors import QuantstudyError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class Doc:
    """Values of a composed YAML document plus the line each path starts on."""

    def __init__(self, name: str, text: str):
        import yaml

        self.name, self.lines = name, {}
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f" line {mark.line + 1}" if mark else ""
            raise QuantstudyError(f"{name}{where}: YAML syntax error: {exc.problem or exc}") from None
        self.value = {} if node is None else self._build(node, ())

    def _build(self, node, path: tuple):
        import yaml

        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out = {}
            for key_node, value_node in node.value:
                key = yaml.constructor.SafeConstructor().construct_object(key_node) \
                    if isinstance(key_node, yaml.ScalarNode) else None
                if not isinstance(key, str):
                    self.fail(path, f"keys must be names, not {key!r}", line=key_node.start_mark.line + 1)
                if key in out:   # PyYAML keeps the last silently; a duplicate is almost always a mistake
                    self.fail(path + (key,), "given twice", line=key_node.start_mark.line + 1)
                out[key] = self._build(value_node, path + (key,))
                # the key's line, not its value's: a block mapping's value starts a line later
                self.lines[path + (key,)] = key_node.start_mark.line + 1
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._build(item, path + (i,)) for i, item in enumerate(node.value)]
        try:
            return yaml.constructor.SafeConstructor().construct_object(node)
        except yaml.YAMLError as exc:   # e.g. a !!python tag, refused by the safe constructor
            self.fail(path, f"YAML error: {getattr(exc, 'problem', None) or exc}")

    def fail(self, path: tuple, message: str, line: int | None = None):
        probe = path
        while line is None and probe:   # a missing field is reported at its parent
            line, probe = self.lines.get(probe), probe[:-1]
        line = line or self.lines.get((), 1)
        raise QuantstudyError(f"{self.name} line {line}: {dotted(path) + ': ' if path else ''}{message}")


def dotted(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


class Checker:
    def __init__(self, doc: Doc):
        self.doc = doc

    def fail(self, path, message):
        self.doc.fail(path, message)

    def section(self, raw, path: tuple, cls, optional: bool = False, default=None):
        """A mapping into dataclass `cls` (fields not given: `default`'s, else the class's);
        unknown fields refused, each field checked."""
        if raw is False and optional:
            return None
        if raw is None or raw is True:
            return default if default is not None else cls()
        if not isinstance(raw, dict):
            self.fail(path, f"must be a mapping of fields{' or false' if optional else ''}, not {show(raw)}")
        names = [f.name for f in dataclasses.fields(cls)]
        for key in raw:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(names)}"
                self.fail(path + (key,), f"unknown field{hint}")
        values = {k: getattr(self, f"_{cls.__name__}_{k}", self._any)(v, path + (k,)) for k, v in raw.items()}
        try:
            return dataclasses.replace(default, **values) if default is not None else cls(**values)
        except QuantstudyError as exc:   # the class's own checks (e.g. CalibrationSpec's)
            self.fail(path, str(exc))

    # generic checks
    def _any(self, v, path):
        return v

    def int_(self, v, path, minimum=1, allow_none=False):
        if v is None and allow_none:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            self.fail(path, f"must be an integer >= {minimum}{' or null' if allow_none else ''}, got {show(v)}")
        return v

    def num(self, v, path, positive=True, allow_none=False, upper=None):
        if v is None and allow_none:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (positive and v <= 0) or \
                (upper is not None and not 0 <= v <= upper):
            want = f"in [0, {upper}]" if upper is not None else "a positive number" if positive else "a number"
            self.fail(path, f"must be {want}{' or null' if allow_none else ''}, got {show(v)}")
        return float(v)

    def str_(self, v, path, choices=None):
        if not isinstance(v, str) or not v.strip():
            self.fail(path, f"must be a non-empty string, got {show(v)}")
        if choices is not None and v not in choices:
            self.fail(path, f"unknown value {v!r}; choose one of: {', '.join(choices)}")
        return v

    def strs(self, v, path, choices=None, allow_empty=False):
        if isinstance(v, str):
            v = [s.strip() for s in v.split(",") if s.strip()]
        if not isinstance(v, list) or (not v and not allow_empty):
            self.fail(path, f"must be a list{'' if allow_empty else ' (not empty)'}, got {show(v)}")
        return tuple(self.str_(x, path + (i,), choices) for i, x in enumerate(v))

    def bool_(self, v, path):
        if not isinstance(v, bool):
            self.fail(path, f"must be true or false, got {show(v)}")
        return v

    # variants
    def _VariantConfig_name(self, v, p):
        self.str_(v, p)
        if not _NAME.match(v) or v == "baseline":
            self.fail(p, f"{v!r} is not usable as a folder name (letters, digits, '.', '_', '-'; not 'baseline')")
        return v

    def _VariantConfig_scheme(self, v, p):
        from quantstudy.schemes import PRESETS

        self.str_(v, p)
        if v.strip().lower() not in PRESETS:
            self.fail(p, f"unknown scheme {v!r}; choose one of: {', '.join(PRESETS)}")
        return v.strip().lower()

    def _VariantConfig_group_size(self, v, p):
        return v if v in ("auto", None) else self.int_(v, p)

    def _VariantConfig_algorithm(self, v, p):
        from quantstudy.quantize.recipes import algorithms

        return self.str_(v, p, tuple(algorithms()))

    def _VariantConfig_smoothquant(self, v, p):
        return self.num(v, p, positive=False, allow_none=True, upper=1)

    def _VariantConfig_dampening(self, v, p):
        value = self.num(v, p)
        return value if value < 1 else self.fail(p, f"must be in (0, 1), got {show(v)}")

    _VariantConfig_actorder = _VariantConfig_mse_clip = _VariantConfig_true_sequential = bool_

    def _VariantConfig_ignore(self, v, p):
        return None if v is None else self.strs(v, p, allow_empty=True)

    def _VariantConfig_kv_cache(self, v, p):
        from quantstudy.schemes import KV_CACHE_PRESETS

        return None if v is None else self.str_(v, p, tuple(KV_CACHE_PRESETS))

    # calibration
    def _CalibrationSpec_source(self, v, p):
        from quantstudy.quantize.calibration import SOURCES

        self.str_(v, p)
        if v not in SOURCES[:-1] and not v.startswith("jsonl:"):
            self.fail(p, f"unknown calibration source {v!r}; choose one of: {', '.join(SOURCES)}")
        return v

    def _CalibrationSpec_num_samples(self, v, p):
        return self.int_(v, p)

    _CalibrationSpec_seq_len = _CalibrationSpec_num_samples

    def _CalibrationSpec_seed(self, v, p):
        return self.int_(v, p, minimum=0)

    # evaluate
    def _EvaluateConfig_tasks(self, v, p):
        from quantstudy.evaluate.registry import TASK_NAMES

        return tuple(dict.fromkeys(self.strs(v, p, TASK_NAMES)))

    def _EvaluateConfig_limit(self, v, p):
        return self.int_(v, p, allow_none=True)

    def _EvaluateConfig_fewshot(self, v, p):
        return self.str_(v, p, ("paper", "zero"))

    def _EvaluateConfig_chat_template(self, v, p):
        return self.str_({True: "on", False: "off"}.get(v, v), p, ("auto", "on", "off"))

    def _EvaluateConfig_batch_size(self, v, p):
        return self.int_(v, p)

    _EvaluateConfig_seed = _CalibrationSpec_seed
    _EvaluateConfig_concurrency = _EvaluateConfig_batch_size
    _EvaluateConfig_twin = _EvaluateConfig_prefix_cache = _EvaluateConfig_until_decided = bool_

    def _EvaluateConfig_round(self, v, p):
        return self.int_(v, p, minimum=10)   # items per task per round: fewer decide nothing

    def _EvaluateConfig_samples(self, v, p):
        return "paper" if isinstance(v, str) and v.strip().lower() == "paper" else self.int_(v, p)

    def _EvaluateConfig_temperature(self, v, p):
        value = self.num(v, p, positive=False, allow_none=True)
        return value if value is None or value >= 0 else self.fail(p, f"must be 0 (greedy) or above, got {show(v)}")

    def _EvaluateConfig_top_p(self, v, p):
        value = self.num(v, p, positive=False, allow_none=True)
        return value if value is None or 0 < value <= 1 else self.fail(p, f"must be in (0, 1], got {show(v)}")

    _EvaluateConfig_seeds = _EvaluateConfig_batch_size
    _CompareConfig_limit = _EvaluateConfig_limit
    _CompareConfig_max_new_tokens = _EvaluateConfig_batch_size

    # bench
    def _BenchConfig_use_cases(self, v, p):
        from quantstudy.bench.roofline_constants import USE_CASES

        return self.strs(v, p, tuple(USE_CASES))

    _PredictConfig_use_cases = _BenchConfig_use_cases

    def _BenchConfig_scale(self, v, p):
        return self.num(v, p)

    def _BenchConfig_modes(self, v, p):
        modes = self.strs(v, p, ("sync", "async", "synchronous", "concurrent", "poisson", "throughput"))
        return tuple({"sync": "synchronous", "async": "concurrent"}.get(m, m) for m in modes)

    _BenchConfig_requests = _BenchConfig_fallback_requests = _BenchConfig_concurrency = _EvaluateConfig_batch_size

    def _BenchConfig_rates(self, v, p):
        if not isinstance(v, list):
            self.fail(p, f"must be a list of requests/s, got {show(v)}")
        return tuple(self.num(x, p + (i,)) for i, x in enumerate(v))

    def _BenchConfig_vllm_python(self, v, p):
        return None if v is None else self.str_(v, p)

    def _BenchConfig_tensor_parallel_size(self, v, p):
        return self.int_(v, p)

    def _BenchConfig_gpu_memory_utilization(self, v, p):
        value = self.num(v, p, allow_none=True)
        if value is not None and value > 1:
            self.fail(p, f"must be a share of the GPU's memory in (0, 1], got {show(v)}")
        return value

    def _BenchConfig_max_model_len(self, v, p):
        return self.int_(v, p, allow_none=True)

    def _BenchConfig_enforce_eager(self, v, p):
        return None if v is None else self.bool_(v, p)

    # predict and deployment
    def _PredictConfig_shape(self, v, p):
        return None if v is None else self.str_(v, p)

    def _hardware(self, v, p):
        from quantstudy.hardware import get_gpu

        self.str_(v, p)
        if v.strip().lower() != "cpu":
            try:
                get_gpu(v)
            except QuantstudyError as exc:
                self.fail(p, str(exc))
        return v.strip().lower()

    def _PredictConfig_hardware(self, v, p):
        if isinstance(v, str):
            v = [s.strip() for s in v.split(",") if s.strip()]
        if not isinstance(v, list) or not v:
            self.fail(p, f"must be a list of hardware names, got {show(v)}")
        return tuple(self._hardware(x, p + (i,)) for i, x in enumerate(v))

    _DeploymentConfig_hardware = _hardware

    def _DeploymentConfig_mode(self, v, p):
        return self.str_(v, p, ("sync", "async"))

    def _DeploymentConfig_use_case(self, v, p):
        return self._BenchConfig_use_cases([v], p)[0]

    def _DeploymentConfig_latency_slo_s(self, v, p):
        return self.num(v, p, allow_none=True)

    _DeploymentConfig_budget_usd_per_hour = _DeploymentConfig_latency_slo_s

    def _DeploymentConfig_gpus(self, v, p):
        return self.int_(v, p, allow_none=True)

    def _DeploymentConfig_min_recovery(self, v, p):
        from quantstudy.results import TASK_GROUPS

        if isinstance(v, dict):
            for group, bar in v.items():
                if group != "average" and group not in TASK_GROUPS:
                    self.fail(p + (group,), f"unknown task group; known: average, {', '.join(TASK_GROUPS)}")
                self.num(bar, p + (group,), positive=False, upper=2)
            return {g: float(b) for g, b in v.items()}
        return self.num(v, p, positive=False, upper=2)


def show(v) -> str:
    return "nothing" if v is None else repr(v)
