"""Peak memory of streaming quantization: flat in depth, and an 8B model on this CPU.

1. Random-init Llama models of the same width and 8 vs 32 decoder layers (made here, written
   as safetensors), GPTQ W4A16 g128 from their folders: peak RSS of each and their ratio
   (goal <= 1.2: memory does not grow with depth).
2. With --eight-b: a Llama-3.1-8B-shaped model, random bf16 weights written shard by shard
   (~16 GB on disk; never a whole model in memory), quantized RTN W4A16 g128 (model-free):
   time and peak RSS (goal < 3 GB).

Each quantization runs in a fresh process; peak RSS is that process's VmHWM.

    .venv/bin/python benchmarks/quantize_memory_scaling.py [--width 1024] [--depths 8,32] [--eight-b]
        [--workdir DIR]   # default: a temporary folder, removed afterwards; a kept one's 8B model is reused
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from llmcompressor_peer import peak_rss_mb  # noqa: E402


def _tokenizer_files(dest: Path) -> None:
    from quantstudy.models import resolve_model

    src = Path(resolve_model("smollm2-135m"))
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, dest / f.name)


def write_random_model(dest: Path, config: dict, seed: int = 0, std: float = 0.02) -> float:
    """A model folder of `config` with random bf16 weights, written tensor by tensor. Returns GB."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, LlamaConfig

    from quantstudy.quantize.shard_writer import ShardWriter

    dest.mkdir(parents=True, exist_ok=True)
    cfg = LlamaConfig(**config)
    cfg.architectures = ["LlamaForCausalLM"]
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(cfg)
    gen = torch.Generator().manual_seed(seed)
    writer = ShardWriter(dest)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            t = torch.ones(p.shape, dtype=torch.bfloat16)
        else:
            t = (torch.randn(p.shape, generator=gen, dtype=torch.float32) * std).to(torch.bfloat16)
        writer.add(name, t)
        del t
    writer.finish()
    cfg.save_pretrained(dest)
    _tokenizer_files(dest)
    return writer.total / 1e9


def child(folder: str, recipe: str, group: int, out: str) -> dict:
    start = time.perf_counter()
    from quantstudy.quantize.calibration import CalibrationSpec
    from quantstudy.quantize.recipes import Recipe
    from quantstudy.quantize.streaming import quantize_streaming
    from quantstudy.schemes import get_scheme

    quantize_streaming(folder, get_scheme("w4a16", group), out, Recipe(recipe),
                       CalibrationSpec("wikitext", 16, 256), device="cpu")
    return {"seconds": time.perf_counter() - start, "max_rss_mb": peak_rss_mb()}


def run_child(folder: Path, recipe: str, group: int, out: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", str(folder), recipe, str(group), str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"quantizing {folder} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--depths", default="8,32")
    ap.add_argument("--eight-b", action="store_true", help="also the Llama-3.1-8B-shaped RTN run (~16 GB of disk)")
    ap.add_argument("--workdir")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        folder, recipe, group, out = args.child
        print(json.dumps(child(folder, recipe, int(group), out)))
        return
    from quantstudy.models.shape import KNOWN_CONFIGS

    work = Path(args.workdir or tempfile.mkdtemp(prefix="qs-memory-"))
    try:
        rows = []
        w = args.width
        for depth in [int(d) for d in args.depths.split(",") if d]:
            config = {"hidden_size": w, "intermediate_size": 11 * w // 4, "num_hidden_layers": depth,
                      "num_attention_heads": w // 64, "num_key_value_heads": w // 256, "vocab_size": 49152,
                      "max_position_embeddings": 2048, "tie_word_embeddings": False}
            folder = work / f"llama-{w}x{depth}"
            gb = write_random_model(folder, config)
            r = run_child(folder, "gptq", 128, work / f"out-{depth}")
            rows.append((depth, gb, r))
            shutil.rmtree(work / f"out-{depth}", ignore_errors=True)
            print(f"width {w}, {depth} layers ({gb:.2f} GB bf16): GPTQ W4A16 g128 {r['seconds']:.0f} s, "
                  f"peak RSS {r['max_rss_mb']:.0f} MiB", flush=True)
        if len(rows) >= 2:
            (d0, _, a), (d1, _, b) = rows[0], rows[-1]
            print(f"peak RSS {d1} layers / {d0} layers: {b['max_rss_mb'] / a['max_rss_mb']:.2f} (goal <= 1.2; "
                  f"weights grew {d1 / d0:.0f}x)")
        if args.eight_b:
            folder = work / "llama-3.1-8b-random"
            t0 = time.perf_counter()
            if (folder / "model.safetensors.index.json").is_file():   # a finished one, from an earlier --workdir run
                gb = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 1e9
            else:
                gb = write_random_model(folder, {**KNOWN_CONFIGS["llama-3.1-8b"], "rope_theta": 500000.0})
            print(f"a Llama-3.1-8B-shaped model with random weights: {gb:.1f} GB bf16, written in "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
            r = run_child(folder, "rtn", 128, work / "out-8b")
            print(f"Llama-3.1-8B shape, RTN W4A16 g128 from files: {r['seconds']:.0f} s, peak RSS "
                  f"{r['max_rss_mb']:.0f} MiB (goal < 3072)")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
