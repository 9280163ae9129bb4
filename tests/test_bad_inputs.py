"""Bad inputs at every door: each case is one line `error: ...` naming what is wrong, exit 2,
and nothing left where the output would have gone (no folder, no temporary folder beside it).

The corpus is written by hand: corrupt and truncated weights, configs that disagree with
their tensors, non-finite weights, empty and binary calibration files, outputs that cannot be
written, bad YAML, unknown names, absurd numbers. Each case builds its input from one shared
random-init model folder (two decoder layers, the default model's tokenizer).
"""

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import random_llama
from quantstudy.cli import app

runner = CliRunner()
ENV = {"COLUMNS": "400"}


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    model, tok = random_llama(layers=2, hidden=64, intermediate=128)
    folder = tmp_path_factory.mktemp("good") / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _copy(good: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(good, folder)
    return folder


def _weights(folder: Path) -> Path:
    return next(folder.glob("*.safetensors"))


def _rewrite(folder: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    path = _weights(folder)
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


# ---- the corpus: (id, make(good, tmp) -> (args, out path or None), message fragment) ------------

def _quantize(folder, out, *extra, scheme="w4a16"):
    return ["quantize", "--model", str(folder), "--scheme", scheme, "--group-size", "32", "--out", str(out),
            *extra]


def corrupt_weights(good, tmp):
    folder = _copy(good, tmp)
    _weights(folder).write_bytes(b"\x00garbage" * 100)
    return _quantize(folder, tmp / "out"), tmp / "out"


def truncated_weights(good, tmp):
    folder = _copy(good, tmp)
    data = _weights(folder).read_bytes()
    _weights(folder).write_bytes(data[:len(data) // 2])
    return _quantize(folder, tmp / "out"), tmp / "out"


def config_disagrees(good, tmp):
    folder = _copy(good, tmp)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["intermediate_size"] = 256
    (folder / "config.json").write_text(json.dumps(cfg))
    return _quantize(folder, tmp / "out"), tmp / "out"


def missing_tensor(good, tmp):
    folder = _copy(good, tmp)
    _rewrite(folder, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    return _quantize(folder, tmp / "out"), tmp / "out"


def nan_weight(good, tmp):
    folder = _copy(good, tmp)
    _rewrite(folder, lambda t: t["model.layers.1.self_attn.o_proj.weight"].__setitem__((3, 5), float("nan")))
    return _quantize(folder, tmp / "out", "--algo", "gptq", "--num-samples", "2", "--seq-len", "16"), tmp / "out"


def inf_weight_rtn(good, tmp):
    folder = _copy(good, tmp)
    _rewrite(folder, lambda t: t["model.layers.0.mlp.down_proj.weight"].__setitem__((0, 0), float("inf")))
    return _quantize(folder, tmp / "out"), tmp / "out"


def nan_norm(good, tmp):   # not a quantized tensor: copied as is, unless refused
    folder = _copy(good, tmp)
    _rewrite(folder, lambda t: t["model.norm.weight"].__setitem__(0, float("nan")))
    return _quantize(folder, tmp / "out"), tmp / "out"


def empty_calibration(good, tmp):
    calib = tmp / "calib.jsonl"
    calib.write_text("")
    return _quantize(good, tmp / "out", "--algo", "gptq", "--calibration", f"jsonl:{calib}"), tmp / "out"


def binary_calibration(good, tmp):
    calib = tmp / "calib.jsonl"
    calib.write_bytes(bytes(range(256)) * 8)
    return _quantize(good, tmp / "out", "--algo", "gptq", "--calibration", f"jsonl:{calib}"), tmp / "out"


def calibration_without_text(good, tmp):
    calib = tmp / "calib.jsonl"
    calib.write_text('{"question": "no text field"}\n' * 3)
    return _quantize(good, tmp / "out", "--algo", "gptq", "--calibration", f"jsonl:{calib}"), tmp / "out"


def missing_calibration(good, tmp):
    return _quantize(good, tmp / "out", "--algo", "gptq", "--calibration", f"jsonl:{tmp / 'none.jsonl'}"), \
        tmp / "out"


def out_under_a_file(good, tmp):
    (tmp / "afile").write_text("x")
    return _quantize(good, tmp / "afile" / "out"), tmp / "afile" / "out"


def out_is_a_file(good, tmp):
    (tmp / "out").write_text("x")
    return _quantize(good, tmp / "out"), None


def no_space(good, tmp, monkeypatch):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("shutil.disk_usage", lambda _p: usage(10 << 30, 10 << 30, 1 << 20))
    return _quantize(good, tmp / "out"), tmp / "out"


def disk_full_mid_write(good, tmp, monkeypatch):
    from quantstudy.quantize.shard_writer import ShardWriter

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "out"))

    monkeypatch.setattr(ShardWriter, "add", full)
    return _quantize(good, tmp / "out"), tmp / "out"


def unknown_scheme(good, tmp):
    return _quantize(good, tmp / "out", scheme="w5a5"), tmp / "out"


def absurd_group_size(good, tmp):
    return ["quantize", "--model", str(good), "--scheme", "w4a16", "--group-size", "-4", "--out",
            str(tmp / "out")], tmp / "out"


def zero_samples(good, tmp):
    return _quantize(good, tmp / "out", "--algo", "gptq", "--num-samples", "0"), tmp / "out"


def unknown_algorithm(good, tmp):
    return _quantize(good, tmp / "out", "--algo", "magic"), tmp / "out"


def info_on_unquantized(good, tmp):
    return ["info", str(good)], None


def _quantized(good, tmp) -> Path:
    out = tmp / "q"
    result = runner.invoke(app, _quantize(good, out), env=ENV)
    assert result.exit_code == 0, result.output
    return out


def info_on_corrupt_checkpoint(good, tmp):
    folder = _quantized(good, tmp)
    _weights(folder).write_bytes(b"not safetensors")
    return ["info", str(folder)], None


def evaluate_corrupt_variant(good, tmp):
    folder = _quantized(good, tmp)
    data = _weights(folder).read_bytes()
    _weights(folder).write_bytes(data[:len(data) // 3])
    return ["evaluate", "--model", str(good), "--variant", str(folder), "--tasks", "ppl", "--limit", "2",
            "--out", str(tmp / "eval.json")], tmp / "eval.json"


def info_on_a_file(good, tmp):
    (tmp / "f.txt").write_text("hello")
    return ["info", str(tmp / "f.txt")], None


def evaluate_unknown_task(good, tmp):
    return ["evaluate", "--model", str(good), "--tasks", "mmlu,nosuchtask", "--limit", "2",
            "--out", str(tmp / "eval.json")], tmp / "eval.json"


def evaluate_missing_variant(good, tmp):
    return ["evaluate", "--model", str(good), "--variant", str(tmp / "none"), "--tasks", "ppl", "--limit", "2",
            "--out", str(tmp / "eval.json")], tmp / "eval.json"


def evaluate_negative_limit(good, tmp):
    return ["evaluate", "--model", str(good), "--tasks", "ppl", "--limit", "-3", "--out", str(tmp / "e.json")], \
        tmp / "e.json"


def study_bad_yaml(good, tmp):
    (tmp / "s.yaml").write_text("model: [unclosed\nvariants: {")
    return ["study", str(tmp / "s.yaml"), "--out", str(tmp / "study")], tmp / "study"


def study_binary_config(good, tmp):
    (tmp / "s.yaml").write_bytes(b"\xff\xfe\x00\x01" * 50)
    return ["study", str(tmp / "s.yaml"), "--out", str(tmp / "study")], tmp / "study"


def study_unknown_field(good, tmp):
    (tmp / "s.yaml").write_text(f"model: {good}\nvariantz: paper\n")
    return ["study", str(tmp / "s.yaml"), "--out", str(tmp / "study")], tmp / "study"


def study_missing_config(good, tmp):
    return ["study", str(tmp / "none.yaml"), "--out", str(tmp / "study")], tmp / "study"


def predict_unknown_gpu(good, tmp):
    return ["predict", "--model-config", "llama-3.1-8b", "--gpu", "h900"], None


def predict_unknown_model_config(good, tmp):
    return ["predict", "--model-config", "llama-9-9000b", "--gpu", "h100"], None


def report_on_empty_folder(good, tmp):
    (tmp / "study").mkdir()
    return ["report", str(tmp / "study")], None


def bench_unknown_use_case(good, tmp):
    return ["bench", "--model", str(good), "--use-case", "poetry", "--out", str(tmp / "b.json")], tmp / "b.json"


def quantize_corrupt_gguf(good, tmp):
    (tmp / "m.gguf").write_bytes(b"GGUF" + b"\x00" * 64)
    return ["quantize", "--model", str(tmp / "m.gguf"), "--scheme", "w4a16", "--out", str(tmp / "out")], tmp / "out"


def quantize_bad_device(good, tmp):
    return _quantize(good, tmp / "out", "--device", "tpu"), tmp / "out"


def quantize_bad_memory(good, tmp):
    return _quantize(good, tmp / "out", "--algo", "gptq", "--max-memory", "lots"), tmp / "out"


def quantize_bad_kv_cache(good, tmp):
    return _quantize(good, tmp / "out", "--kv-cache", "int3"), tmp / "out"


def evaluate_corrupt_baseline(good, tmp):
    folder = _copy(good, tmp)
    _weights(folder).write_bytes(b"\x00" * 16)
    return ["evaluate", "--model", str(folder), "--tasks", "ppl", "--limit", "2", "--out", str(tmp / "e.json")], \
        tmp / "e.json"


def evaluate_out_under_a_file(good, tmp):
    (tmp / "afile").write_text("x")
    return ["evaluate", "--model", str(good), "--tasks", "ppl", "--limit", "2",
            "--out", str(tmp / "afile" / "e.json")], tmp / "afile" / "e.json"


def evaluate_config_disagrees(good, tmp):
    folder = _copy(good, tmp)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["hidden_size"] = 96
    (folder / "config.json").write_text(json.dumps(cfg))
    return ["evaluate", "--model", str(folder), "--tasks", "ppl", "--limit", "2", "--out", str(tmp / "e.json")], \
        tmp / "e.json"


def info_config_not_json(good, tmp):
    folder = _quantized(good, tmp)
    (folder / "config.json").write_text("{not json")
    return ["info", str(folder)], None


def compare_missing_variant(good, tmp):
    return ["compare", "--model", str(good), "--variant", str(tmp / "none"), "--limit", "2",
            "--out", str(tmp / "c.json")], tmp / "c.json"


def compare_zero_limit(good, tmp):
    return ["compare", "--model", str(good), "--variant", str(good), "--limit", "0", "--out", str(tmp / "c.json")], \
        tmp / "c.json"


def recommend_on_nothing(good, tmp):
    return ["recommend", str(tmp / "nostudy")], None


def recommend_on_wrong_json(good, tmp):
    (tmp / "r.json").write_text("{}")
    return ["recommend", str(tmp / "r.json"), "--hardware", "h100"], None


def report_on_binary_results(good, tmp):
    (tmp / "results.json").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    return ["report", str(tmp / "results.json"), "--out", str(tmp / "rep")], tmp / "rep"


def report_on_wrong_json(good, tmp):
    (tmp / "results.json").write_text('{"not": "a study"}')
    return ["report", str(tmp / "results.json"), "--out", str(tmp / "rep")], tmp / "rep"


def study_unknown_scheme(good, tmp):
    (tmp / "s.yaml").write_text(f"model: {good}\nvariants:\n  - {{name: a, scheme: w5a5}}\n")
    return ["study", str(tmp / "s.yaml"), "--out", str(tmp / "study")], tmp / "study"


def study_absurd_limit(good, tmp):
    (tmp / "s.yaml").write_text(f"model: {good}\nevaluate: {{limit: -5}}\n")
    return ["study", str(tmp / "s.yaml"), "--out", str(tmp / "study")], tmp / "study"


def study_out_is_a_file(good, tmp):
    (tmp / "s.yaml").write_text(f"model: {good}\nvariants: paper\n")
    (tmp / "study").write_text("x")
    return ["study", str(tmp / "s.yaml"), "--out", str(tmp / "study")], None


def predict_absurd_gpus(good, tmp):
    return ["predict", "--model-config", "llama-3.1-8b", "--gpu", "h100", "--gpus", "0"], None


def predict_unknown_use_case(good, tmp):
    return ["predict", "--model-config", "llama-3.1-8b", "--gpu", "h100", "--use-case", "poetry"], None


def bench_missing_model(good, tmp):
    return ["bench", "--model", str(tmp / "none"), "--out", str(tmp / "b.json")], tmp / "b.json"


CASES = [
    (corrupt_weights, "safetensors"), (truncated_weights, "safetensors"), (config_disagrees, "config.json implies"),
    (missing_tensor, "model.layers.1.mlp.up_proj.weight"), (nan_weight, "model.layers.1.self_attn.o_proj"),
    (inf_weight_rtn, "model.layers.0.mlp.down_proj"), (nan_norm, "model.norm.weight"),
    (empty_calibration, "calib.jsonl"), (binary_calibration, "calib.jsonl"),
    (calibration_without_text, "calib.jsonl"), (missing_calibration, "none.jsonl"),
    (out_under_a_file, "afile"), (out_is_a_file, "exists and is a file"), (no_space, "not enough space"),
    (disk_full_mid_write, "No space left"), (unknown_scheme, "unknown scheme"), (absurd_group_size, "group"),
    (zero_samples, "samples"), (unknown_algorithm, "magic"), (info_on_unquantized, "not a compressed-tensors checkpoint"),
    (info_on_corrupt_checkpoint, "safetensors"), (evaluate_corrupt_variant, "safetensors"),
    (info_on_a_file, "f.txt"), (evaluate_unknown_task, "nosuchtask"), (evaluate_missing_variant, "none"),
    (evaluate_negative_limit, "limit"), (study_bad_yaml, "s.yaml"), (study_binary_config, "s.yaml"),
    (study_unknown_field, "variantz"), (study_missing_config, "none.yaml"), (predict_unknown_gpu, "h900"),
    (predict_unknown_model_config, "llama-9-9000b"), (report_on_empty_folder, "study"),
    (bench_unknown_use_case, "--use-case"), (quantize_corrupt_gguf, "m.gguf"), (quantize_bad_device, "tpu"),
    (quantize_bad_memory, "lots"), (quantize_bad_kv_cache, "int3"), (evaluate_corrupt_baseline, "safetensors"),
    (evaluate_out_under_a_file, "afile"), (compare_missing_variant, "none"), (compare_zero_limit, "limit"),
    (recommend_on_nothing, "nostudy"), (recommend_on_wrong_json, "does not fit"),
    (report_on_binary_results, "results.json"), (report_on_wrong_json, "results.json"),
    (study_unknown_scheme, "w5a5"), (study_absurd_limit, "limit"), (study_out_is_a_file, "study"),
    (evaluate_config_disagrees, "config.json implies"), (info_config_not_json, "config.json"), (predict_absurd_gpus, "--gpus"), (predict_unknown_use_case, "poetry"), (bench_missing_model, "none"),
]


@pytest.mark.parametrize("make,message", CASES, ids=[m.__name__ for m, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(good, tmp_path, monkeypatch, make, message):
    import inspect

    kwargs = {"monkeypatch": monkeypatch} if "monkeypatch" in inspect.signature(make).parameters else {}
    work = tmp_path / "work"
    work.mkdir()
    args, out = make(good, work, **kwargs)
    before = set(work.rglob("*"))
    result = runner.invoke(app, args, env=ENV)
    text = result.output.strip()
    assert result.exit_code == 2, (result.exit_code, text, result.exception)
    assert "Traceback" not in text and text.startswith("error:"), text
    assert len(text.splitlines()) == 1, text
    assert message in text, text
    if out is not None:
        assert not out.exists(), f"{out} was left behind"
    left = {p for p in set(work.rglob("*")) - before if p.name != "runs"}
    assert not left, f"left behind: {sorted(map(str, left))}"


def test_a_study_folder_in_use_is_refused_naming_the_holder(good, tmp_path):
    """A second study on a folder another one holds: one line naming the holder's pid, exit 2,
    and nothing of the folder touched; the lock goes with its holder (a kernel flock)."""
    import os

    from quantstudy.study.lock import StudyLock

    (tmp_path / "s.yaml").write_text(f"model: {good}\nvariants:\n  - {{name: r, scheme: w4a16, group_size: 32}}\n"
                                     "evaluate: false\ncompare: false\nbench: false\n")
    study = tmp_path / "study"
    study.mkdir()
    with StudyLock(study):
        before = sorted(study.iterdir())
        result = runner.invoke(app, ["study", str(tmp_path / "s.yaml"), "--out", str(study)], env=ENV)
        assert result.exit_code == 2 and result.output.strip().startswith("error:"), result.output
        assert f"pid {os.getpid()}" in result.output and len(result.output.strip().splitlines()) == 1
        assert sorted(study.iterdir()) == before
    with StudyLock(study):   # released: taken again at once
        pass
