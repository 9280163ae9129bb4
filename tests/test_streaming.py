"""Streaming quantization: any model size from its files, one decoder layer resident at a time.

Random-init Llama-architecture models (built from transformers configs, written as
safetensors; no weights downloaded) are quantized from their folders. What must hold: the
walker never holds more than two decoder layers' parameters at once (counted with weak
references to every tensor it makes resident); the streamed checkpoint equals the one the
in-memory path writes from the same model, tensor for tensor; a checkpoint forced into
several shards loads in transformers with tensors identical to a single-shard one; a killed
or failing run leaves nothing behind; activations past the memory budget spill to disk and
give the same checkpoint.
"""

import gc
import json
import weakref

import pytest
import torch
from safetensors import safe_open
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from quantstudy.errors import QuantstudyError
from quantstudy.quantize import streaming
from quantstudy.quantize.calibration import CalibrationSpec
from quantstudy.quantize.recipes import Recipe
from quantstudy.quantize.streaming import ShardWeights, quantize_streaming
from quantstudy.schemes import get_scheme

VOCAB = 256


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", pad_token="t0", bos_token="t1",
                                   eos_token="t2")


def write_model(folder, layers=4, hidden=64, seed=0, tied=False):
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=tied)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("src") / "llama")


CALIB = CalibrationSpec("random", num_samples=8, seq_len=32, seed=0)


def _tensors(folder):
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, framework="pt") as fh:
            out.update({k: fh.get_tensor(k) for k in fh.keys()})
    return out


def test_gptq_never_holds_more_than_two_decoder_layers(source, tmp_path, monkeypatch):
    live: list[tuple[str, weakref.ref]] = []
    peak = []

    class Counting(ShardWeights):
        def materialize(self, module, prefix):
            super().materialize(module, prefix)
            live.extend((prefix, weakref.ref(p)) for p in module.parameters())

    from quantstudy.quantize.algorithms import gptq as handler

    real = handler.gptq_quantize

    def spy(*args, **kwargs):
        gc.collect()
        peak.append(len({prefix for prefix, ref in live if ref() is not None and ref().device.type != "meta"}))
        return real(*args, **kwargs)

    monkeypatch.setattr(handler, "gptq_quantize", spy)
    quantize_streaming(source, get_scheme("w4a16", 32), tmp_path / "out", Recipe("gptq"), CALIB, device="cpu",
                       weights_factory=Counting)
    assert len(peak) == 4 * 4   # q/k/v, o, gate/up, down in each of 4 layers
    assert max(peak) <= 2 and min(peak) >= 1


@pytest.mark.parametrize("scheme, recipe", [("w4a16", Recipe("rtn")), ("w8a8-int8", Recipe("gptq", smoothquant=0.8)),
                                            ("w4a16", Recipe("awq"))])
def test_streamed_checkpoint_equals_the_in_memory_one(source, tmp_path, scheme, recipe):
    from quantstudy.inference.loading import load_model
    from quantstudy.quantize.pipeline import quantize_loaded

    chosen = get_scheme(scheme, 32) if scheme == "w4a16" else get_scheme(scheme)
    model, tokenizer, folder = load_model(source, dtype="float32")
    quantize_loaded(model, tokenizer, str(source), folder, chosen, tmp_path / "memory", recipe, CALIB)
    quantize_streaming(source, chosen, tmp_path / "stream", recipe, CALIB, device="cpu")
    a, b = _tensors(tmp_path / "memory"), _tensors(tmp_path / "stream")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ra = json.loads((tmp_path / "memory" / "quantstudy.json").read_text())["layers"]
    rb = json.loads((tmp_path / "stream" / "quantstudy.json").read_text())["layers"]
    # the same tensors; the float32 sums of squares behind the reports may add in another
    # order where the two copies sit at different alignments (SIMD peeling), hence 1e-6
    assert [(r["name"], r["shape"]) for r in ra] == [(r["name"], r["shape"]) for r in rb]
    for x, y in zip(ra, rb):
        assert x["sqnr_db"] == pytest.approx(y["sqnr_db"], rel=1e-6)
        assert x["signal_energy"] == pytest.approx(y["signal_energy"], rel=1e-6)


def test_several_shards_load_as_one(source, tmp_path):
    from transformers import AutoModelForCausalLM

    scheme = get_scheme("w8a8-int8")
    one = quantize_streaming(source, scheme, tmp_path / "one", Recipe("rtn"), device="cpu").checkpoint.path
    many = quantize_streaming(source, scheme, tmp_path / "many", Recipe("rtn"), device="cpu",
                              max_shard_bytes=20_000).checkpoint.path
    files = sorted(many.glob("*.safetensors"))
    assert len(files) > 3 and (many / "model.safetensors.index.json").is_file()
    index = json.loads((many / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(_tensors(one))
    assert _tensors(one).keys() == _tensors(many).keys()
    assert all(torch.equal(x, _tensors(many)[k]) for k, x in _tensors(one).items())
    a = AutoModelForCausalLM.from_pretrained(one).state_dict()
    b = AutoModelForCausalLM.from_pretrained(many).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_spilled_activations_give_the_same_checkpoint(source, tmp_path):
    scheme = get_scheme("w4a16", 32)
    # spilled activations always take the two-forward walk: compare it with itself in memory
    recipe = Recipe("gptq", true_sequential=False)
    quantize_streaming(source, scheme, tmp_path / "ram", recipe, CALIB, device="cpu")
    quantize_streaming(source, scheme, tmp_path / "disk", recipe, CALIB, device="cpu", max_memory=1)
    a, b = _tensors(tmp_path / "ram"), _tensors(tmp_path / "disk")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_failing_run_leaves_nothing(source, tmp_path, monkeypatch):
    from quantstudy.quantize.algorithms import gptq as handler

    calls, real = [], handler.gptq_quantize

    def boom(*args, **kwargs):   # the sixth GPTQ call (layer 1 of 4) fails
        calls.append(1)
        if len(calls) == 6:
            raise QuantstudyError("stopped on purpose")
        return real(*args, **kwargs)

    monkeypatch.setattr(handler, "gptq_quantize", boom)
    with pytest.raises(QuantstudyError):
        quantize_streaming(source, get_scheme("w4a16", 32), tmp_path / "out", Recipe("gptq"), CALIB, device="cpu")
    assert list(tmp_path.iterdir()) == []


def test_bad_device_is_a_one_line_error():
    with pytest.raises(QuantstudyError, match="only cpu and cuda"):
        streaming.resolve_device("mps")
    if not torch.cuda.is_available():
        with pytest.raises(QuantstudyError, match="no CUDA device"):
            streaming.resolve_device("cuda:0")


def test_bf16_forwards_change_little_and_are_recorded(source, tmp_path):
    """forward_dtype='bfloat16' on a CPU runs the calibration GEMMs in bf16 (weights float32):
    the Hessians change by bf16 rounding of the activations only, so GPTQ picks the same
    integers for the vast majority of weights, and the checkpoint says how it was made."""
    scheme = get_scheme("w4a16", 32)
    quantize_streaming(source, scheme, tmp_path / "f32", Recipe("gptq"), CALIB, device="cpu")
    quantize_streaming(source, scheme, tmp_path / "bf16", Recipe("gptq"), CALIB, device="cpu", forward_dtype="bfloat16")
    a, b = _tensors(tmp_path / "f32"), _tensors(tmp_path / "bf16")
    packed = [k for k in a if k.endswith("weight_packed")]
    same = sum(int((a[k] == b[k]).sum()) for k in packed) / sum(a[k].numel() for k in packed)
    assert 0.5 < same < 1.0   # int32 words of 8 nibbles each: one differing nibble spoils a word
    records = [json.loads((tmp_path / f / "quantstudy.json").read_text())["forward_gemm_dtype"] for f in ("f32", "bf16")]
    assert records == ["float32", "bfloat16"]
    with pytest.raises(QuantstudyError, match="forward dtype 'fp16'"):
        quantize_streaming(source, scheme, tmp_path / "bad", Recipe("gptq"), CALIB, device="cpu", forward_dtype="fp16")


def test_a_quantize_process_keeps_scikit_learn_out():
    """transformers imports sklearn.metrics (with SciPy, ~145 MiB) whenever it is installed;
    `quantstudy quantize` marks it absent first, and the model classes still import."""
    import subprocess
    import sys

    # the model class too: its losses import scipy.optimize, torch._dynamo imports Triton
    code = ("import sys; from quantstudy.quantize.process import without_sklearn; without_sklearn(); "
            "from transformers import AutoModelForCausalLM, AutoTokenizer; "
            "import transformers.models.llama.modeling_llama; "
            "from quantstudy.quantize.pipeline import quantize_checkpoint; "
            "print(*[sys.modules.get(m, 'absent') for m in ('sklearn', 'scipy', 'triton')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[-3:] == ["None", "None", "None"]
