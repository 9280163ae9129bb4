"""The GPU kernel benchmark's CPU path: every format's arithmetic against float64, our
INT4 layout, and our Triton W4A16 kernel through Triton's interpreter."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from quantstudy.hardware import get_gpu
from quantstudy.kernels.w4a16_triton import pack_int4_groups, unpack_int4_groups
from quantstudy.models.shape import ModelShape

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_cpu_path_checks_every_format(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_kernels

    assert gpu_kernels.main(["--cpu", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert {r["format"] for r in rows} == {"bf16", "fp8", "int8", "w4a16-triton"}
    for r in rows:
        assert r["ok"] and r["kernel_error"] < 1e-2, r
        # quantization error is real and ordered by bits: bf16 < int8 < fp8 (3 mantissa bits) < int4
        assert r["quant_error"] > 0
    mean = {f: sum(r["quant_error"] for r in rows if r["format"] == f) / 12 for f in ("bf16", "int8", "fp8", "w4a16-triton")}
    assert mean["bf16"] < mean["int8"] < mean["fp8"] < mean["w4a16-triton"] < 0.2, mean


def test_int4_group_layout_round_trips_and_splits_groups_in_halves():
    q = torch.randint(-8, 8, (24, 256), dtype=torch.int8)
    packed = pack_int4_groups(q, 128)
    assert packed.shape == (128, 24) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4_groups(packed, 128), q)
    # group 1, row 5: low nibble is K index 128 + 5, high nibble K index 128 + 64 + 5
    assert int(packed[64 + 5, 3]) == (int(q[3, 133]) + 8) | ((int(q[3, 197]) + 8) << 4)


INTERPRETED = """
import torch
from quantstudy.kernels.linear import prepare, relative_error
from quantstudy.kernels import w4a16_triton
torch.manual_seed(0)
worst = 0.0
for m in (1, 16, 80):            # split-K launcher (atomics) for 1 and 16, tiled for 80
    w = torch.randn(96, 384)
    layer = prepare(w, "w4a16-triton")
    x = torch.randn(m, 384).half()  # the interpreter mishandles bf16 MMAs; fp16 runs the same code
    y = w4a16_triton.w4a16_matmul(x, layer.tensors["packed"], layer.tensors["scales"], 128)
    assert y.shape == (m, 96) and y.dtype == torch.float16
    worst = max(worst, relative_error(y, layer.reference(x)))
print(worst)
"""


def test_triton_w4a16_kernel_in_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", INTERPRETED], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip().splitlines()[-1]) < 1e-3


def test_llama_shapes_give_the_published_parameter_counts():
    for name, billions in (("llama-3.1-8b", 8.03), ("llama-3.1-70b", 70.55)):
        shape = ModelShape.known(name)
        total = shape.linear_params + shape.embedding_params + shape.layers * 2 * shape.hidden + shape.hidden
        assert abs(total / 1e9 - billions) / billions < 0.01, (name, total)
    assert ModelShape.known("llama-3.1-8b").linear_shapes()["qkv_proj"] == (6144, 4096)


def test_gpu_names_resolve_to_catalogue_entries():
    assert get_gpu("NVIDIA H200").name == "h200"
    assert get_gpu("NVIDIA H100 80GB HBM3").name == "h100"
    assert get_gpu("h100").peak_flops("fp8") == 1979e12
    assert get_gpu("a100").peak_flops("fp8") is None
