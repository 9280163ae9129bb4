"""Load compressed-tensors checkpoints in vLLM and greedy-generate from fixed token ids.

Runs inside the engine environment (.venv-vllm), not quantstudy's: it imports only
vLLM. Usage: python vllm_load_check.py OUT.json MAX_TOKENS DIR [DIR ...]
Prints nothing on success; writes {dir: {"tokens": [...], "error": null}} to OUT.json.
"""

import json
import os
import sys

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    out_path, max_tokens, dirs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    prompt = TokensPrompt(prompt_token_ids=[1, 504, 3458, 282, 4649, 314, 7042, 30, 378, 3458, 282, 6767, 314])
    results = {}
    for d in dirs:
        try:
            llm = LLM(model=d, dtype="bfloat16", enforce_eager=True, max_model_len=512, seed=0)
            out = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True))
            results[d] = {"tokens": list(out[0].outputs[0].token_ids), "error": None}
            del llm
        except Exception as exc:  # report per checkpoint, keep going
            results[d] = {"tokens": [], "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    with open(out_path, "w") as fh:
        json.dump(results, fh)


if __name__ == "__main__":
    main()
