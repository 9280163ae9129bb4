"""Writing safetensors shards as tensors arrive, in constant memory, all or nothing.

The streaming quantizer produces a layer's tensors and forgets them; a shard of up to
`max_shard_bytes` is therefore written without ever holding it: each tensor's bytes are
appended to a spill file as it arrives, and when the shard is full its header (offsets in
arrival order, as the safetensors format allows) and the spilled bytes are copied into the
shard file. Everything lives in a temporary folder beside the output, renamed into place by
the caller only when the whole checkpoint is written: a killed run leaves no half-written
checkpoint, and `abort` removes the temporary folder.

The files are standard safetensors (`safe_open`, transformers and vLLM read them); several
shards get `model.safetensors.index.json` with the total size and the weight map.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import torch

MAX_SHARD_BYTES = 5 * 2**30
INDEX_FILE = "model.safetensors.index.json"
_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.bool: "BOOL"}
_COPY = 1 << 24   # bytes per copy step from the spill file into the shard


class ShardWriter:
    """Append tensors; `finish()` closes the last shard and writes the index. Shard files are
    named model-00001-of-0000N.safetensors (model.safetensors when there is one)."""

    def __init__(self, folder: str | Path, max_shard_bytes: int = MAX_SHARD_BYTES):
        if max_shard_bytes < 1:
            raise ValueError("max_shard_bytes must be positive")
        self.folder, self.max_shard_bytes = Path(folder), int(max_shard_bytes)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shards: list[tuple[Path, list[str]]] = []   # written shard (temporary name), its tensors
        self.total = 0
        self._entries: list[tuple[str, str, list[int], int, int]] = []
        self._spill = None
        self._size = 0
        self._names: set[str] = set()

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._names:
            raise ValueError(f"tensor {name} written twice")
        t = tensor.detach().contiguous().cpu()
        if t.dtype not in _DTYPES:
            raise ValueError(f"{name}: dtype {t.dtype} has no safetensors name")
        nbytes = t.numel() * t.element_size()
        if self._entries and self._size + nbytes > self.max_shard_bytes:
            self._close_shard()
        if self._spill is None:
            self._spill = open(self.folder / f".spill-{len(self.shards):05d}", "wb")
        data = t.reshape(-1).view(torch.uint8).numpy() if nbytes else b""
        self._spill.write(memoryview(data) if nbytes else data)
        self._entries.append((name, _DTYPES[t.dtype], list(t.shape), self._size, self._size + nbytes))
        self._size += nbytes
        self.total += nbytes
        self._names.add(name)

    def _close_shard(self) -> None:
        spill_path = Path(self._spill.name)
        self._spill.close()
        self._spill = None
        header = {"__metadata__": {"format": "pt"}}
        header.update({n: {"dtype": d, "shape": s, "data_offsets": [a, b]} for n, d, s, a, b in self._entries})
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)   # the data starts 8-byte aligned
        path = self.folder / f".shard-{len(self.shards) + 1:05d}.safetensors"
        with open(path, "wb") as out, open(spill_path, "rb") as spilled:
            out.write(struct.pack("<Q", len(blob)))
            out.write(blob)
            shutil.copyfileobj(spilled, out, _COPY)
        spill_path.unlink()
        self.shards.append((path, [e[0] for e in self._entries]))
        self._entries, self._size = [], 0

    def finish(self) -> list[Path]:
        """Close the last shard, give the shards their final names, write the index if several."""
        if self._entries or not self.shards:
            if self._spill is None:   # an empty checkpoint still gets one (empty) shard
                self._spill = open(self.folder / f".spill-{len(self.shards):05d}", "wb")
            self._close_shard()
        n = len(self.shards)
        names = ["model.safetensors"] if n == 1 else [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
        final = []
        for (tmp, _), name in zip(self.shards, names):
            tmp.rename(self.folder / name)
            final.append(self.folder / name)
        if n > 1:
            weight_map = {t: name for (_, tensors), name in zip(self.shards, names) for t in tensors}
            (self.folder / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": self.total},
                                                              "weight_map": weight_map}, indent=2))
        return final

    def abort(self) -> None:
        if self._spill is not None:
            self._spill.close()
            self._spill = None
