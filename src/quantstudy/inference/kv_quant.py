"""The FP8 KV cache in process: keys and values quantized on their way into the cache.

vLLM with `--kv-cache-dtype fp8` stores each new token's K (after RoPE and any k-norm: what
the attention reads) and V as FP8 E4M3 with a static per-layer scale, `fp8 = sat(x / s)`, and
every attention read -- the prompt's own tokens included, since prefill attends through the
cache too -- sees `fp8 * s`. We reproduce that at the one place transformers' attention hands
K and V to a cache: `past_key_values.update(k, v, layer_idx)`. A forward pre-hook on each
attention module puts a proxy there whose `update` quantize-dequantizes K and V, then passes
them on to the real cache (generation, packed prefixes) or straight back (a forward without a
cache), so what is cached and what is attended to are the quantized values (compressed-tensors'
`QuantizedKVCache` hooks the same call). The same hook observes K and V for calibration.

The scale convention (compressed-tensors' static FP8 observer, what llm-compressor writes and
vLLM reads): s = max|x| / 448 over the calibration tokens, per layer (or per KV head), rounded
to the checkpoint's dtype before use; values beyond 448 s saturate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from quantstudy.numerics import FP8_DTYPE, FP8_MAX

KVFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def fp8_qdq(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """FP8 E4M3 quantize-dequantize of K or V [batch, kv_heads, tokens, head_dim] with a
    per-tensor scale (1 element) or one per KV head; computed in float32, returned in x's dtype."""
    s = scale.float().reshape(-1)
    s = s.reshape(1, -1, 1, 1) if s.numel() > 1 else s.reshape(())
    q = (x.float() / s).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return (q.float() * s).to(x.dtype)


def kv_scale(amax: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """max|x| / 448, rounded to the storage dtype (a zero amax -- a dead head -- gets a tiny
    positive scale rather than a division by zero)."""
    return (amax.float() / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny).to(dtype)


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The decoder's self-attention modules, by name: transformers' attention classes carry
    their `layer_idx` and project keys with k_proj (or a fused qkv_proj)."""
    out = []
    for name, m in model.named_modules():
        if type(m).__name__.endswith("Attention") and hasattr(m, "layer_idx") and \
                (hasattr(m, "k_proj") or hasattr(m, "qkv_proj")):
            out.append((name, m))
    return out


class _CacheProxy:
    """Stands in for the attention's `past_key_values` for one call: K and V go through `fn`
    first, then into the real cache if there is one. Anything else is the real cache's."""

    def __init__(self, inner, fn: KVFn):
        self._inner, self._fn = inner, fn

    def update(self, key_states, value_states, layer_idx=None, *args, **kwargs):
        k, v = self._fn(key_states, value_states)
        if self._inner is None:
            return k, v
        return self._inner.update(k, v, layer_idx, *args, **kwargs)

    def __getattr__(self, name):
        inner = self.__dict__.get("_inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)


def hook_kv(attention: nn.Module, fn: KVFn):
    """Route the K and V `attention` caches (or attends to) through `fn`; returns the handle."""
    def pre_hook(_module, args, kwargs):
        kwargs["past_key_values"] = _CacheProxy(kwargs.get("past_key_values"), fn)
        return args, kwargs
    return attention.register_forward_pre_hook(pre_hook, with_kwargs=True)


class KVObserver:
    """Running max|K| and max|V| of one attention module, per tensor or per KV head."""

    def __init__(self, per_head: bool = False):
        self.per_head = per_head
        self.k_amax: torch.Tensor | None = None
        self.v_amax: torch.Tensor | None = None

    def _amax(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().abs()
        return x.amax(dim=(0, 2, 3)) if self.per_head else x.amax().reshape(1)

    def __call__(self, k: torch.Tensor, v: torch.Tensor):
        with torch.autocast(k.device.type, enabled=False):
            ka, va = self._amax(k), self._amax(v)
        self.k_amax = ka if self.k_amax is None else torch.maximum(self.k_amax, ka)
        self.v_amax = va if self.v_amax is None else torch.maximum(self.v_amax, va)
        return k, v

    def scales(self, dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor]:
        """(k_scale, v_scale) as a checkpoint stores them: shape (1,), or (heads, 1, 1) per head
        (llm-compressor's attn_head shape, which vLLM flattens)."""
        if self.k_amax is None:
            raise RuntimeError("no keys observed: the attention never ran")
        shape = (-1, 1, 1) if self.per_head else (1,)
        return kv_scale(self.k_amax, dtype).reshape(shape), kv_scale(self.v_amax, dtype).reshape(shape)


@contextlib.contextmanager
def observing(attention: nn.Module, per_head: bool = False):
    """Collect max|K|, max|V| of the forwards run inside the block (K after RoPE)."""
    observer = KVObserver(per_head)
    handle = hook_kv(attention, observer)
    try:
        yield observer
    finally:
        handle.remove()


class FP8KVCache:
    """The installed emulation on one attention module: its scales and the hook's handle."""

    def __init__(self, attention: nn.Module, k_scale: torch.Tensor, v_scale: torch.Tensor):
        self.k_scale, self.v_scale = k_scale.detach().float(), v_scale.detach().float()
        self.handle = hook_kv(attention, self)

    def __call__(self, k: torch.Tensor, v: torch.Tensor):
        return fp8_qdq(k, self.k_scale.to(k.device)), fp8_qdq(v, self.v_scale.to(v.device))


def install_fp8_kv(model: nn.Module, scales: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> list[FP8KVCache]:
    """Quantize K and V to FP8 on their way into the cache, for every attention module named
    in `scales` ({attention module name: (k_scale, v_scale)}); all of them must be there."""
    modules = dict(attention_modules(model))
    missing = sorted(set(modules) - set(scales))
    unknown = sorted(set(scales) - set(modules))
    if missing or unknown:
        raise ValueError(f"KV scales do not match the model's attention modules (missing {missing[:2]}, "
                         f"unknown {unknown[:2]})")
    return [FP8KVCache(modules[name], k, v) for name, (k, v) in scales.items()]


def split_kv_scales(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Take the `<attention>.k_scale` / `.v_scale` tensors out of a checkpoint's state dict
    (in place), by attention module."""
    out: dict[str, list] = {}
    for key in [k for k in tensors if k.endswith((".k_scale", ".v_scale"))]:
        module, _, leaf = key.rpartition(".")
        out.setdefault(module, [None, None])[leaf == "v_scale"] = tensors.pop(key)
    return {m: (k, v) for m, (k, v) in out.items()}
