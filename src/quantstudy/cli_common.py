"""What every command of quantstudy's command line shares: the offline environment, the typer
app, the consoles, and the rule that a `QuantstudyError` prints as one line (exit code 2)
while anything else is a bug and keeps its traceback. The commands live in `cli` (quantize,
info, study, report) and `cli_measure` (evaluate, compare, predict, bench)."""

from __future__ import annotations

import functools
import math
import os
import sys
from pathlib import Path
from typing import Optional

# Never reach for a model hub: everything quantstudy uses ships in packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# transformers' warnings about a model's own config (e.g. "Ignoring clean_up_tokenization_spaces
# for BPE") are noise between our progress lines; set TRANSFORMERS_VERBOSITY=warning to see them.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from quantstudy.errors import QuantstudyError

app = typer.Typer(
    help="Should I serve this model in BF16, FP8, INT8 or INT4? Quantize, evaluate, compare, bench.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _one_line_usage_error(exc) -> None:
    """typer's usage errors (unknown option, bad value, missing argument) as every other error:
    one line on stderr, exit 2 (typer exits with the exception's code, 2 for usage errors)."""
    command = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else "quantstudy"
    err_console.print(f"[bold red]error:[/] {exc.format_message()} (see: {command} --help)", highlight=False,
                      soft_wrap=True)


import typer.rich_utils as _typer_rich  # noqa: E402  (typer calls it by attribute at error time)

_typer_rich.rich_format_error = _one_line_usage_error

# Piped (not a terminal), tables keep every cell whole: rich would otherwise fit them to 80
# columns and cut the names a script reads (`quantstudy schemes | cat` printed "w8a8-f…").
console = Console() if sys.stdout.isatty() else Console(width=100_000)
err_console = Console(stderr=True)
JSON_HELP = "Print the result as JSON on stdout instead of tables (for scripts)."


def print_json(data) -> None:
    """JSON on stdout, nothing else: rich's markup and highlighting stay out of it."""
    import json

    sys.stdout.write(json.dumps(data, indent=1, default=str) + "\n")


def one_line_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except QuantstudyError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as exc:
            # the machine said no (disk full, read-only, permission, a file where a folder goes):
            # the path and the system's words, not a traceback
            where = f"{exc.filename}: " if exc.filename else ""
            err_console.print(f"[bold red]error:[/] {where}{exc.strerror or exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.fields[item]}"), console=err_console, transient=True,
                    disable=not err_console.is_terminal)


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_bytes(text: str, option: str) -> int:
    """'8GiB', '512MB', '2g', '1000000' -> bytes."""
    import re

    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*", text)
    unit = m and _UNITS.get(m.group(2).lower())
    if not m or unit is None or float(m.group(1)) <= 0:
        raise QuantstudyError(f"{option} {text!r} is not an amount of memory (e.g. 8GiB, 512MB)")
    return int(float(m.group(1)) * unit)


def _fmt_db(x: float) -> str:
    return "exact" if x == float("inf") else f"{x:.1f}"
