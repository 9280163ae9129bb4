"""Open a study's HTML report in headless Chromium, save a screenshot, check every section is filled.

    .venv/bin/python scripts/check_report.py [runs/study/report/report.html] [--screenshot PNG]

Exit 0 when every section of a full study's report has its text, tables and figures; else
prints what is missing, one line each, and exits 1. Needs Chromium (Debian: apt-get install
chromium) and Playwright (in the test extra); `make study` runs it when Chromium is there.
"""

import argparse
import sys
from pathlib import Path

from quantstudy.errors import QuantstudyError
from quantstudy.report.browser import FULL_STUDY, check_report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", nargs="?", default="runs/study/report/report.html")
    parser.add_argument("--screenshot", help="default: screenshot.png beside the report")
    args = parser.parse_args()
    report = Path(args.report)
    shot = Path(args.screenshot) if args.screenshot else report.with_name("screenshot.png")
    try:
        check = check_report(report, shot, FULL_STUDY)
    except QuantstudyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for s in check.sections:
        print(f"  {s.id:15s} {s.text_chars:6d} chars  {len(s.table_rows)} tables  {s.images} figures")
    for p in check.problems:
        print(f"PROBLEM: {p}")
    print(f"screenshot: {check.screenshot}")
    print("report check: every section filled" if check.ok else f"report check: {len(check.problems)} problem(s)")
    return 0 if check.ok else 1


if __name__ == "__main__":
    sys.exit(main())
