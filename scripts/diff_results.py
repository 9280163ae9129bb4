"""Compare two results.json files field by field: what a refactor changed in a study's output.

    python scripts/diff_results.py BEFORE.json AFTER.json [--ignore REGEX ...] [--rel 1e-12]

Prints every path whose value differs (numbers beyond a relative tolerance), every path
present on one side only, and a count. `--ignore` takes regular expressions matched against
dotted paths (e.g. 'bench\\.measured' for timings, '^provenance' for clocks and versions).
Exit status 0 when nothing outside the ignored paths differs, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys


def walk(a, b, path, out, rel):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            p = f"{path}.{k}" if path else str(k)
            if k not in a or k not in b:
                out.append((p, "only in " + ("after" if k not in a else "before"), a.get(k), b.get(k)))
            else:
                walk(a[k], b[k], p, out, rel)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append((path, f"length {len(a)} -> {len(b)}", None, None))
        for i, (x, y) in enumerate(zip(a, b)):
            walk(x, y, f"{path}[{i}]", out, rel)
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if not (a == b or (math.isfinite(a) and math.isfinite(b) and abs(a - b) <= rel * max(abs(a), abs(b)))):
            out.append((path, "number", a, b))
    elif a != b:
        out.append((path, "value", a, b))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--ignore", action="append", default=[], help="regex of dotted paths to leave out")
    ap.add_argument("--rel", type=float, default=0.0, help="relative tolerance for numbers (default: exact)")
    args = ap.parse_args()
    before, after = (json.load(open(p)) for p in (args.before, args.after))
    diffs = []
    walk(before, after, "", diffs, args.rel)
    ignore = [re.compile(r) for r in args.ignore]
    kept = [d for d in diffs if not any(r.search(d[0]) for r in ignore)]
    for path, kind, a, b in kept:
        show = lambda v: (repr(v)[:100] + "...") if len(repr(v)) > 100 else repr(v)
        print(f"{path}: {kind}: {show(a)} -> {show(b)}")
    print(f"{len(kept)} difference(s) ({len(diffs) - len(kept)} more in ignored paths)")
    return 1 if kept else 0


if __name__ == "__main__":
    sys.exit(main())
