"""The peer: llm-compressor quantizes a model with given calibration ids.

Runs inside .venv-llmc (llmcompressor 0.14.0.1), never imports quantstudy. Prints one
JSON line: seconds (model load + oneshot + save), max RSS.
Usage: python llmcompressor_peer.py MODEL_DIR CALIB.json RECIPE(w4a16-gptq|w8a8-sq-gptq) GROUP OUT_DIR
"""

import json
import sys
import time



def peak_rss_mb() -> float:
    """This process image's peak RSS (VmHWM). Not ru_maxrss: that one survives fork+exec
    and would report the launching parent's peak."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")

def main() -> None:
    model_dir, calib_path, recipe_name, group, out_dir = sys.argv[1:6]
    start = time.perf_counter()
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.smoothquant import SmoothQuantModifier
    from transformers import AutoModelForCausalLM

    # llm-compressor pins IntermediatesCache to pin_memory(), which raises without an accelerator
    try:
        from llmcompressor.pipelines.cache import IntermediatesCache
        IntermediatesCache.pin_memory = lambda self, *a, **k: None
    except ImportError:
        pass

    torch.manual_seed(0)
    ids = json.load(open(calib_path))
    ds = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(r) for r in ids]})
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if recipe_name == "w4a16-gptq":
        weights = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": int(group),
                   "observer": "mse"}
        recipe = [GPTQModifier(config_groups={"g": {"targets": ["Linear"], "weights": weights}}, ignore=["lm_head"],
                               actorder="static", dampening_frac=0.01, block_size=128)]
    else:
        weights = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel", "observer": "mse"}
        acts = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token", "dynamic": True}
        recipe = [SmoothQuantModifier(smoothing_strength=0.8),
                  GPTQModifier(config_groups={"g": {"targets": ["Linear"], "weights": weights,
                                                    "input_activations": acts}},
                               ignore=["lm_head"], actorder="static", dampening_frac=0.01, block_size=128)]
    oneshot(model=model, dataset=ds, recipe=recipe, num_calibration_samples=len(ids), max_seq_length=len(ids[0]),
            shuffle_calibration_samples=False)
    model.save_pretrained(out_dir, save_compressed=True)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "max_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main()
