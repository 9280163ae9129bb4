"""The quantize stage's entry points: model reference + scheme + recipe -> checkpoint.

`quantize_checkpoint` streams from the model's files (`streaming`): one decoder layer in
memory, on the GPU where there is one. `quantize_loaded` quantizes a model already in memory
(tests, notebooks) through the same layer walk and writer.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from quantstudy.models.checkpoint import CheckpointInfo, read_checkpoint_info
from quantstudy.models.references import resolve_model, torch_dtype
from quantstudy.quantize.calibration import CalibrationSpec, load_calibration
from quantstudy.quantize.model import (
    LayerReport,
    aggregate_sqnr_db,
    check_shapes,
    quantizable_linears,
    quantize_model_weights,
)
from quantstudy.quantize.recipes import Recipe
from quantstudy.quantize.sequential import decoder_layers, quantize_sequential
from quantstudy.quantize.writer import save_checkpoint
from quantstudy.schemes import Scheme


@dataclass
class QuantizeResult:
    checkpoint: CheckpointInfo
    layers: list[LayerReport]
    seconds: float

    @property
    def sqnr_db(self) -> float:
        """Whole-model SQNR: total signal over total noise across quantized layers."""
        return aggregate_sqnr_db([(r.signal_energy, r.sqnr_db) for r in self.layers])

    @property
    def min_layer_sqnr_db(self) -> float:
        return min(r.sqnr_db for r in self.layers)


def quantize_checkpoint(
    model_ref: str | Path,
    scheme: Scheme,
    out_dir: str | Path,
    recipe: Recipe = Recipe(),
    calibration: CalibrationSpec = CalibrationSpec(),
    dtype: str = "bfloat16",
    allow_pickle: bool = False,
    device: str = "auto",
    max_memory: int | None = None,
    max_shard_bytes: int | None = None,
    forward_dtype: str = "auto",
    on_layer: Callable[[str], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> QuantizeResult:
    """Quantize the model `model_ref` names into a compressed-tensors checkpoint, streaming
    from its safetensors files. A pickle-only folder (allowed with `allow_pickle`) cannot be
    streamed: it is loaded whole and quantized in memory."""
    from quantstudy.quantize.streaming import quantize_streaming
    from quantstudy.quantize.writer import check_output

    check_output(Path(out_dir))   # before the model is even resolved
    folder = Path(resolve_model(model_ref, allow_pickle=allow_pickle))
    if not any(folder.glob("*.safetensors")):
        from quantstudy.inference.loading import load_model

        start = time.perf_counter()
        model, tokenizer, source = load_model(folder, dtype="float32", allow_pickle=allow_pickle)
        result = quantize_loaded(model, tokenizer, str(model_ref), source, scheme, out_dir, recipe, calibration, dtype,
                                 on_layer=on_layer, on_start=on_start, in_place=True)
        result.seconds = time.perf_counter() - start
        return result
    return quantize_streaming(folder, scheme, out_dir, recipe, calibration, dtype, device=device,
                              max_memory=max_memory, max_shard_bytes=max_shard_bytes, forward_dtype=forward_dtype,
                              source_ref=str(model_ref),
                              on_start=on_start, on_layer=on_layer)


def quantize_loaded(
    model,
    tokenizer,
    model_ref: str,
    source: Path,
    scheme: Scheme,
    out_dir: str | Path,
    recipe: Recipe = Recipe(),
    calibration: CalibrationSpec = CalibrationSpec(),
    dtype: str = "bfloat16",
    on_layer: Callable[[str], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    in_place: bool = False,
) -> QuantizeResult:
    """Quantize a float model in memory into a checkpoint. Calibrated recipes change the
    weights they work on (smoothing, dequantized layers): unless `in_place`, they work
    on a copy and leave `model` as it was."""
    start = time.perf_counter()
    store_dtype = torch_dtype(dtype)
    stats: dict = {}
    if recipe.needs_calibration or scheme.needs_calibration:   # KV-cache / NVFP4 input scales
        check_shapes(quantizable_linears(model, scheme), scheme)  # before any calibration work
        if not in_place:
            model = copy.deepcopy(model)
        calib_ids = load_calibration(calibration, tokenizer)
        if on_start:
            on_start(len(decoder_layers(model)))
        qweights, reports = quantize_sequential(model, scheme, recipe, calib_ids, store_dtype, on_layer=on_layer,
                                                stats=stats)
        calib_record = calibration.record()
    else:
        if on_start:
            on_start(len(quantizable_linears(model, scheme)))
        qweights, reports = quantize_model_weights(model, scheme, scale_dtype=store_dtype, progress=on_layer)
        calib_record = None
    record = {"algorithm": recipe.algorithm, "recipe": asdict(recipe), "source_model": model_ref,
              "source_path": str(source), "calibration": calib_record,
              "calibration_forwards_per_layer": stats.get("forwards_per_layer")}
    save_checkpoint(model, tokenizer, qweights, scheme, out_dir, store_dtype, record, reports,
                    extra=stats.get("kv_scales"))
    return QuantizeResult(read_checkpoint_info(out_dir), reports, time.perf_counter() - start)
