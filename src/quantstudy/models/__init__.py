"""Floor 2, models: what a model is without running it -- references (embedded packaged
models, HF folders, GGUF files) resolved to validated folders, shapes from configs,
compressed-tensors checkpoints read as a format, and architecture families as data.
Running a model is `inference`'s job."""

from quantstudy.models.embedded import DEFAULT_MODEL, EMBEDDED_MODELS, cache_root
from quantstudy.models.references import resolve_model, torch_dtype

__all__ = ["DEFAULT_MODEL", "EMBEDDED_MODELS", "cache_root", "resolve_model", "torch_dtype"]
