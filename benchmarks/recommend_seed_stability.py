"""Does the default study's recommendation move when the evaluation seed changes?

Copies a finished study folder (its store and checkpoints), reruns the same study with
`evaluate.seed` set to each of `--seeds` (stored items are reused: on the default tasks the seed
only changes the bootstrap resampling, and with it every interval), and prints, per deployment,
the chosen candidate and what decided it for each seed. Exit code 1 if any decision differs.

    .venv/bin/python benchmarks/recommend_seed_stability.py --study runs/study [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

DEPLOYMENTS = ({}, {"min_recovery": 0.98}, {"min_recovery": 0.95}, {"hardware": "h100", "mode": "async"},
               {"hardware": "a100", "use_case": "code-completion"})


def main() -> int:
    import yaml

    from quantstudy.recommend import recommend
    from quantstudy.study import load_config, run_study

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--study", type=Path, default=Path("runs/study"))
    ap.add_argument("--seeds", default="0,1")
    args = ap.parse_args()
    if not (args.study / "study.sqlite").is_file():
        sys.exit(f"error: no finished study at {args.study} (run `make study` first)")
    decisions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            out = Path(tmp) / f"seed{seed}"
            shutil.copytree(args.study, out)
            cfg = load_config(None).to_dict()
            cfg.pop("source", None)
            cfg["evaluate"]["seed"] = seed
            path = Path(tmp) / f"seed{seed}.yaml"
            path.write_text(yaml.safe_dump(cfg, sort_keys=False))
            outcome = run_study(load_config(path), out)
            decisions[seed] = []
            for dep in DEPLOYMENTS:
                rec = recommend(outcome.results, dep)
                c = rec.candidate(rec.chosen) if rec.chosen else None
                decisions[seed].append((rec.chosen, c.decided_by if c else ""))
    seeds = list(decisions)
    print(f"{'deployment':<48} " + " ".join(f"{'seed ' + str(s):<28}" for s in seeds))
    for i, dep in enumerate(DEPLOYMENTS):
        print(f"{str(dep or 'the study default'):<48} "
              + " ".join(f"{f'{decisions[s][i][0]} ({decisions[s][i][1]})':<28}" for s in seeds))
    same = all(decisions[s] == decisions[seeds[0]] for s in seeds)
    print("the same decisions for every seed" if same else "DECISIONS DIFFER between seeds")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
