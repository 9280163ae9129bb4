"""The CLI: commands work end to end, and bad input is one line on stderr, exit 2."""

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from quantstudy.cli import app

runner = CliRunner()


def _one_line_error(result, pattern):
    assert result.exit_code == 2, result.output
    out = result.output.strip()
    assert "Traceback" not in out
    assert len(out.splitlines()) <= 2  # rich may soft-wrap one long line in a narrow terminal
    assert out.startswith("error:") and pattern in out.replace("\n", " "), out


def test_schemes_lists_presets():
    result = runner.invoke(app, ["schemes"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in ("w8a8-fp8", "w8a8-int8", "w4a16", "w4a16-asym", "w8a16", "fp8-block"):
        assert name in result.output


def test_unknown_scheme(tmp_path):
    _one_line_error(runner.invoke(app, ["quantize", "--scheme", "int3", "--out", str(tmp_path / "x")],
                                  env={"COLUMNS": "300"}), "unknown scheme")


def test_missing_model_folder(tmp_path):
    _one_line_error(runner.invoke(app, ["quantize", "--model", str(tmp_path / "none"), "--scheme", "w4a16",
                                       "--out", str(tmp_path / "x")], env={"COLUMNS": "300"}), "not found")


def test_info_on_a_non_checkpoint(tmp_path):
    _one_line_error(runner.invoke(app, ["info", str(tmp_path)], env={"COLUMNS": "300"}), "config.json")


def test_output_folder_not_empty(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    _one_line_error(runner.invoke(app, ["quantize", "--scheme", "w8a8-int8", "--out", str(tmp_path / "x")],
                                  env={"COLUMNS": "300"}), "not empty")
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("args, message", [
    (["--device", "mps"], "only cpu and cuda"),
    (["--max-memory", "lots"], "is not an amount of memory"),
    (["--max-memory", "0GB"], "is not an amount of memory"),
])
def test_bad_device_or_memory_budget(args, message, tmp_path):
    _one_line_error(runner.invoke(app, ["quantize", "--scheme", "w8a8-int8", "--algo", "gptq", "--out",
                                        str(tmp_path / "x"), *args], env={"COLUMNS": "300"}), message)
    assert not (tmp_path / "x").exists()


def test_memory_amounts_parse():
    from quantstudy.cli import parse_bytes

    assert parse_bytes("8GiB", "-") == 8 * 2**30 and parse_bytes("512MB", "-") == 512 * 10**6
    assert parse_bytes("1.5g", "-") == 1_500_000_000 and parse_bytes("4096", "-") == 4096


@pytest.mark.slow
def test_indivisible_group_size_names_layer_and_fixes(tmp_path, smollm2):
    result = runner.invoke(app, ["quantize", "--scheme", "w4a16", "--out", str(tmp_path / "x")],
                           env={"COLUMNS": "400"})
    _one_line_error(result, "group size 128 does not divide model.layers.0.self_attn.q_proj's input width 576")
    assert "64" in result.output and "--group-size" in result.output
    assert not (tmp_path / "x").exists()  # nothing half-written


@pytest.mark.slow
def test_quantize_then_transformers_loads_offline(tmp_path, smollm2):
    out = tmp_path / "x"
    result = runner.invoke(app, ["quantize", "--model", "smollm2-135m", "--scheme", "w8a8-int8", "--out", str(out)],
                           env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "W8A8-INT8" in result.output and "210 layers" in result.output
    code = (
        "import sys, torch; from transformers import AutoModelForCausalLM, AutoTokenizer;"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]); t = AutoTokenizer.from_pretrained(sys.argv[1]);"
        "ids = t('Hello', return_tensors='pt')['input_ids'];"
        "print(m.generate(ids, max_new_tokens=4, do_sample=False).shape[1] - ids.shape[1])"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "4"

    info = runner.invoke(app, ["info", str(out)], env={"COLUMNS": "200"})
    assert info.exit_code == 0 and "int-quantized" in info.output and "210" in info.output
    described = json.loads(runner.invoke(app, ["info", str(out), "--json"]).stdout)
    assert described["format"] == "int-quantized" and described["quantized layers"] == "210"
    recipe = json.loads((out / "quantstudy.json").read_text())
    assert recipe["algorithm"] == "rtn" and recipe["scheme"]["name"] == "w8a8-int8"


@pytest.mark.parametrize("args, message", [
    (["--algo", "spqr"], "unknown algorithm"),
    (["--smoothquant", "1.5"], "smoothquant"),
    (["--calibration", "c4"], "unknown calibration source"),
    (["--num-samples", "0"], "positive number of samples"),
])
def test_bad_recipe_options(tmp_path, args, message):
    _one_line_error(runner.invoke(app, ["quantize", "--scheme", "w8a8-int8", "--out", str(tmp_path / "x"), *args],
                                  env={"COLUMNS": "300"}), message)
    assert not (tmp_path / "x").exists()


def _piped(*args):
    """The command as a script runs it: stdout a pipe, not a terminal, and a narrow COLUMNS."""
    env = {**os.environ, "COLUMNS": "60"}
    env.pop("FORCE_COLOR", None)
    return subprocess.run([sys.executable, "-m", "quantstudy.cli", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_piped_tables_print_every_name_whole_and_json_parses():
    from quantstudy.schemes import PRESETS

    table = _piped("schemes")
    assert table.returncode == 0 and "…" not in table.stdout
    for name in PRESETS:
        assert f" {name} " in table.stdout, name
    listed = json.loads(_piped("schemes", "--json").stdout)
    assert [row["name"] for row in listed] == list(PRESETS)
    predicted = _piped("predict", "--gpu", "a6000,h100", "--format", "bf16,w8a8-int8,w4a16")
    assert predicted.returncode == 0 and "…" not in predicted.stdout and "w8a8-int8" in predicted.stdout
    rows = json.loads(_piped("predict", "--gpu", "a6000,h100", "--format", "bf16,w8a8-int8,w4a16", "--json").stdout)
    assert {(r["fmt"], r["hardware"]) for r in rows} >= {("w8a8-int8", "H100"), ("w4a16", "A6000")} or len(rows) == 12


@pytest.mark.slow
def test_evaluate_piped_and_json(tmp_path):
    args = ["evaluate", "--tasks", "ppl", "--limit", "2", "--store", str(tmp_path / "s.sqlite"),
            "--out", str(tmp_path / "e.json")]
    table = _piped(*args)
    assert table.returncode == 0, table.stderr[-2000:]
    assert "…" not in table.stdout and "recovery % [95% CI]" in table.stdout   # 60 columns asked, all shown
    report = json.loads(_piped(*args, "--json").stdout)
    assert report["tasks"]["ppl"]["n"] == 2 and report == json.loads((tmp_path / "e.json").read_text())


def test_predict_on_a_fixed_node_prices_every_format_there():
    out = _piped("predict", "--model-config", "llama-3.1-70b", "--gpu", "h100", "--format", "bf16,w8a8-fp8,w4a16",
                 "--use-case", "rag", "--gpus", "8", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout)
    assert {r["fmt"] for r in rows} == {"bf16", "w8a8-fp8", "w4a16"}
    for r in rows:
        assert r["gpus"] == 8 and r["async_gpus"] == 8 and r["layout"] and r["curve"]
        assert max(p["requests_per_s"] for p in r["curve"]) == pytest.approx(r["requests_per_s"])
    odd = _piped("predict", "--model-config", "llama-3.1-70b", "--gpu", "h100", "--format", "bf16,w4a16",
                 "--use-case", "rag", "--gpus", "3")
    assert odd.returncode == 0 and "budget s" in odd.stdout   # w4a16 fits 3 replicas; bf16 has no 3-GPU layout
