"""The study orchestrator: one config -> quantize, evaluate, compare, bench, predict -> report.

`config` reads and validates the YAML, `jobs` turns it into content-keyed jobs, `executors`
runs the independent ones (in process or on Ray), `run` drives everything through the
results store, `results` assembles what `recommend` and `report` read.
"""

from quantstudy.study.config import StudyConfig, load_config, parse_config
from quantstudy.study.run import StudyOutcome, run_study

__all__ = ["StudyConfig", "StudyOutcome", "load_config", "parse_config", "run_study"]
