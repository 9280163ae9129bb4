"""Quantize a model of any size from its files: one decoder layer in memory at a time.

The model is built on the meta device (parameters take no memory; small buffers such as
rotary tables are real). Calibrated recipes run the sequential walk (`sequential.walk`)
with `ShardWeights`: a layer's tensors are read from the safetensors shards when its turn
comes and put back on the meta device after, and every finished layer goes straight into
the output shards (`writer.CheckpointOutput`). Round-to-nearest needs no forward pass at
all: it streams tensor by tensor, model-free, from the source shards to the output.

Resident at any moment: one decoder layer, the calibration activations (spilled to disk past
`max_memory`), the tensor being written, and the embedding while the first layer's inputs
are captured. Forwards run in bfloat16 on a GPU and in float32 on a CPU. `forward_dtype=
"bfloat16"` on a CPU keeps the weights float32 and runs the forwards' GEMMs in bf16 under
autocast: on CPUs that multiply bf16 natively (AVX512-BF16, AMX) GEMMs are ~4x faster and
a GPTQ run ~11-14% shorter, at a cost in quality (SmolLM2 W4A16 g64 GPTQ held-out perplexity
60.82 vs 60.13 in float32, 2026-12-02), so it is not the default. Hessians are float32
products accumulated in float64; Cholesky factors and scale searches run in float32, on
the same device. GPTQ runs each layer's forward once (true sequential, `one_pass.py`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from quantstudy.errors import QuantstudyError
from quantstudy.models.checkpoint import read_checkpoint_info
from quantstudy.models.references import torch_dtype
from quantstudy.models.shards import ShardIndex
from quantstudy.numerics_fp import nv_global_scale
from quantstudy.quantize.calibration import CalibrationSpec, load_calibration
from quantstudy.quantize.fp4 import fp_rtn, fused_groups
from quantstudy.quantize.model import LayerReport, check_shapes, is_ignored
from quantstudy.quantize.process import keep_memory_returnable
from quantstudy.quantize.recipes import Recipe
from quantstudy.quantize.rtn import rtn_quantize
from quantstudy.quantize.sequential import decoder_layers, layers_prefix, walk
from quantstudy.quantize.writer import CheckpointOutput
from quantstudy.schemes import Scheme, Strategy, stored_weight_bytes


def resolve_device(device: str = "auto") -> torch.device:
    """auto: the first CUDA device where torch sees one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise QuantstudyError(f"unknown device {device!r}; use auto, cpu or cuda[:N]") from None
    if dev.type not in ("cpu", "cuda"):
        raise QuantstudyError(f"--device {device}: only cpu and cuda[:N] are supported")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise QuantstudyError(f"--device {device}: torch sees no CUDA device on this machine")
    return dev


FORWARD_DTYPES = ("auto", "float32", "bfloat16")


def forward_precision_for(dev: torch.device, forward_dtype: str = "auto") -> tuple[torch.dtype, torch.dtype | None]:
    """(dtype the layer weights are held in, GEMM dtype under autocast or None) for the
    calibration forwards on `dev`."""
    if forward_dtype not in FORWARD_DTYPES:
        raise QuantstudyError(f"forward dtype '{forward_dtype}': expected one of {', '.join(FORWARD_DTYPES)}")
    if dev.type != "cpu":
        return (torch.float32, None) if forward_dtype == "float32" else (torch.bfloat16, None)
    return torch.float32, torch.bfloat16 if forward_dtype == "bfloat16" else None


def meta_model(folder: Path, dtype: torch.dtype):
    """(model, generation config): the modules with parameters on the meta device, buffers real."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QuantstudyError(f"could not build the model of {folder}: {first}") from None
    try:   # what from_pretrained attaches: the folder's generation_config.json, else one from the config
        generation = GenerationConfig.from_pretrained(folder)
    except OSError:
        generation = GenerationConfig.from_model_config(config)
    return model.eval(), generation


class ShardWeights:
    """Parameters read from the shards when a module's turn comes, freed (back to meta) after."""

    def __init__(self, shards: ShardIndex, dtype: torch.dtype, device: torch.device):
        self.shards, self.dtype, self.device = shards, dtype, device

    def materialize(self, module: nn.Module, prefix: str) -> None:
        from accelerate.utils import set_module_tensor_to_device

        for name, _ in list(module.named_parameters()):
            full = f"{prefix}.{name}" if prefix else name
            set_module_tensor_to_device(module, name, self.device, value=self.shards.get(full, dtype=self.dtype))

    def release(self, module: nn.Module) -> None:
        from accelerate.utils import set_module_tensor_to_device

        for name, _ in list(module.named_parameters()):
            set_module_tensor_to_device(module, name, "meta")


class ShardSink:
    """The walk's output, written as it comes (linears compressed, the rest in the checkpoint dtype)."""

    def __init__(self, output: CheckpointOutput):
        self.output, self.written = output, set()

    def add_linear(self, name, qw, module) -> None:
        self.output.add_linear(name, qw, module)
        self.written.update((f"{name}.weight", f"{name}.bias"))

    def add(self, name, tensor) -> None:
        self.output.add(name, tensor)
        self.written.add(name)


@torch.no_grad()
def quantize_streaming(
    source: str | Path,
    scheme: Scheme,
    out_dir: str | Path,
    recipe: Recipe = Recipe(),
    calibration: CalibrationSpec = CalibrationSpec(),
    dtype: str = "bfloat16",
    device: str = "auto",
    max_memory: int | None = None,
    max_shard_bytes: int | None = None,
    batch_size: int = 8,
    forward_dtype: str = "auto",
    source_ref: str | None = None,
    on_start: Callable[[int], None] | None = None,
    on_layer: Callable[[str], None] | None = None,
    weights_factory=ShardWeights,
):
    """Quantize the safetensors model in folder `source` into a compressed-tensors checkpoint
    at `out_dir`, one decoder layer (or, for RTN, one tensor) at a time."""
    from transformers import AutoTokenizer

    from quantstudy.quantize.pipeline import QuantizeResult

    start = time.perf_counter()
    keep_memory_returnable()
    source = Path(source)
    store_dtype = torch_dtype(dtype)
    dev = resolve_device(device)
    compute_dtype, gemm_dtype = forward_precision_for(dev, forward_dtype)
    recipe.check(scheme)
    model, generation = meta_model(source, compute_dtype)
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and not is_ignored(n, scheme.ignore)]
    check_shapes(targets, scheme)     # before any work
    shards = ShardIndex(source)
    shards.check_matches(model, bool(getattr(model.config, "tie_word_embeddings", False)))
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    output = CheckpointOutput(out_dir, scheme, store_dtype, max_shard_bytes,
                              expected_bytes=_expected_bytes(shards, targets, scheme, store_dtype))
    sink = ShardSink(output)
    stats: dict = {}
    # An FP8 KV cache needs K and V scales, NVFP4 W4A4 its linears' input global scales, so a
    # calibration forward even for RTN (the walk with RTN's layer handler: same weights as the
    # model-free path, bit for bit)
    calibrate = recipe.needs_calibration or scheme.needs_calibration
    try:
        if calibrate:
            calib_ids = load_calibration(calibration, tokenizer)
            reports = _calibrated(model, weights_factory(shards, compute_dtype, dev), sink, scheme, recipe, calib_ids,
                                  store_dtype, dev, max_memory, batch_size, on_start, on_layer, gemm_dtype, stats)
        else:
            reports = []
            if on_start:
                on_start(len(targets))
        # what is left: targets outside the walk (all of them for RTN; lm_head when not ignored),
        # then every other tensor of the source (embeddings, the final norm, untargeted linears)
        left = [name for name, _ in targets if f"{name}.weight" not in sink.written]
        shared = _shared_global_scales(shards, left, scheme)
        for name in left:
            w = shards.get(f"{name}.weight", dtype=torch.float32)
            qw = rtn_quantize(w, scheme.weights, store_dtype) if name not in shared else \
                fp_rtn(w, scheme.weights, shared[name])
            reports.append(LayerReport.measure(name, w, qw))
            bias = f"{name}.bias"
            output.add_linear(name, qw, bias=shards.get(bias) if bias in shards else None)
            sink.written.update((f"{name}.weight", bias))
            if on_layer and not calibrate:
                on_layer(name)
        tied = bool(getattr(model.config, "tie_word_embeddings", False))
        for name in shards.names():
            if name not in sink.written and not (tied and name == "lm_head.weight"):
                output.add(name, shards.get(name))
        record = {"algorithm": recipe.algorithm, "recipe": asdict(recipe), "source_model": source_ref or str(source),
                  "source_path": str(source), "calibration": calibration.record() if calibrate else None,
                  "forward_gemm_dtype": (str(gemm_dtype or compute_dtype).removeprefix("torch.")
                                         if calibrate else None),
                  "calibration_forwards_per_layer": stats.get("forwards_per_layer")}
        output.finish(model.config, generation, tokenizer, record, reports)
    except BaseException:
        output.abort()
        raise
    finally:
        shards.close()
    return QuantizeResult(read_checkpoint_info(out_dir), reports, time.perf_counter() - start)


def _expected_bytes(shards: ShardIndex, targets, scheme: Scheme, store_dtype: torch.dtype) -> int:
    """The checkpoint's size, from the source's tensor shapes: targeted linears at the format's
    stored bytes, everything else in the checkpoint's dtype."""
    quantized = {f"{name}.weight" for name, _ in targets}
    total = 0.0
    for name in shards.names():
        shape = shards.shape(name)
        if name in quantized and len(shape) == 2:
            total += stored_weight_bytes(scheme.weights, *shape)
        else:
            total += math.prod(shape) * store_dtype.itemsize
    return int(total)


def _shared_global_scales(shards: ShardIndex, names: list[str], scheme: Scheme) -> dict[str, torch.Tensor]:
    """NVFP4: one global scale per fused set (q/k/v, gate/up) of `names`, as the walk and the
    in-memory path give them (vLLM keeps one per fused layer); read one tensor at a time."""
    if scheme.weights.strategy is not Strategy.TENSOR_GROUP:
        return {}
    out = {}
    for members in fused_groups(names):
        absmax = max(shards.get(f"{n}.weight", dtype=torch.float32).abs().max() for n in members)
        out.update({n: nv_global_scale(absmax) for n in members})
    return out


def _calibrated(model, weights: ShardWeights, sink, scheme, recipe, calib_ids, store_dtype, dev, max_memory,
                batch_size, on_start, on_layer, gemm_dtype, stats) -> list[LayerReport]:
    """The walk over the decoder layers, the embedding (and whatever else lies before the first
    layer) resident only while the first layer's inputs are captured."""
    layers = decoder_layers(model)
    prefix = layers_prefix(model, layers)
    if on_start:
        on_start(len(layers))
    from accelerate.utils import set_module_tensor_to_device

    shell = [n for n, _ in model.named_parameters() if not n.startswith(prefix + ".") and n in weights.shards]
    for name in shell:
        set_module_tensor_to_device(model, name, dev, value=weights.shards.get(name, dtype=weights.dtype))
    for module in model.modules():   # buffers (rotary tables) on the compute device
        for key, buf in list(module._buffers.items()):
            if buf is not None and buf.device != dev:
                module._buffers[key] = buf.to(dev)

    def capture_done():
        for name in shell:
            set_module_tensor_to_device(model, name, "meta")

    return walk(model, weights, sink, scheme, recipe, calib_ids, store_dtype, batch_size, device=dev,
                max_memory=max_memory, on_layer=on_layer, after_capture=capture_done, gemm_dtype=gemm_dtype,
                stats=stats)
