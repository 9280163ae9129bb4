"""Model references: embedded packaged models, HF folders, GGUF files."""

from quantstudy.models.embedded import DEFAULT_MODEL, EMBEDDED_MODELS, cache_root
from quantstudy.models.loading import load_model, resolve_model, torch_dtype

__all__ = ["DEFAULT_MODEL", "EMBEDDED_MODELS", "cache_root", "load_model", "resolve_model", "torch_dtype"]
