"""The calibration activations between decoder layers: the one state the streaming walker carries.

One hidden-state tensor per calibration batch, on the compute device while they fit in the
memory budget (`--max-memory`), spilled to safetensors files in a temporary folder beyond it
(never pickles), read back one batch at a time. Each layer also has its own keyword
arguments per batch (masks and position embeddings; a model with sliding-window layers gives
each layer type its own mask), captured once before the first layer runs.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class Activations:
    """Hidden states per batch, in memory up to `budget_bytes` (None: no limit), then on disk."""

    def __init__(self, budget_bytes: int | None = None, device: str | torch.device = "cpu",
                 spill_root: str | Path | None = None):
        self.budget, self.device = budget_bytes, torch.device(device)
        self.spill_root = spill_root
        self._items: list[torch.Tensor | Path] = []
        self._resident = 0
        self._dir: Path | None = None

    def append(self, hidden: torch.Tensor) -> None:
        nbytes = hidden.numel() * hidden.element_size()
        if self.budget is None or self._resident + nbytes <= self.budget:
            self._items.append(hidden.detach().to(self.device))
            self._resident += nbytes
            return
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="quantstudy-acts-", dir=self.spill_root))
        path = self._dir / f"{len(self._items):06d}.safetensors"
        save_file({"h": hidden.detach().contiguous().cpu()}, str(path))
        self._items.append(path)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for item in self._items:
            yield item if isinstance(item, torch.Tensor) else load_file(str(item))["h"].to(self.device)

    @property
    def spilled(self) -> int:
        """Batches held on disk rather than in memory."""
        return sum(not isinstance(i, torch.Tensor) for i in self._items)

    def close(self) -> None:
        self._items.clear()
        self._resident = 0
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


class LayerBatches:
    """What one decoder layer runs on: each batch's hidden states with that layer's own kwargs."""

    def __init__(self, hidden: Activations, kwargs: list[dict]):
        self.hidden, self.kwargs = hidden, kwargs

    def __iter__(self) -> Iterator[tuple[torch.Tensor, dict]]:
        return zip(self.hidden, self.kwargs)

    def __len__(self) -> int:
        return len(self.hidden)
