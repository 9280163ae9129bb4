"""Results store: SQLite, one file per study, every result keyed by what produced it.

Two tables. `items` holds per-item evaluation results, one row per (model, task, task
version, item); a rerun asks which items are done and computes only the rest. Rows go in
and come out as plain dicts (ITEM_FIELDS): the store knows no stage's types. `results`
holds any stage's output under a content hash of its inputs (model fingerprint, recipe,
calibration, task version, code version), with provenance. Writes are single
transactions, so a process killed at any point leaves either the whole write or none of
it (SQLite's journal), and nothing completed is lost.

A model's identity is a fingerprint of its files' bytes (safetensors, config, tokenizer),
memoised per (path, size, mtime) so large checkpoints are hashed once.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sqlite3
import time
from pathlib import Path

from quantstudy import __version__
from quantstudy.items import ItemResult

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    model TEXT NOT NULL, task TEXT NOT NULL, task_version TEXT NOT NULL, item_id TEXT NOT NULL,
    prediction TEXT, correct INTEGER, score REAL, loglik REAL, tokens INTEGER, extra TEXT,
    created REAL, PRIMARY KEY (model, task, task_version, item_id));
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY, kind TEXT NOT NULL, inputs TEXT NOT NULL, result TEXT NOT NULL,
    provenance TEXT NOT NULL, created REAL);
CREATE TABLE IF NOT EXISTS fingerprints (
    path TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, digest TEXT NOT NULL,
    PRIMARY KEY (path, size, mtime_ns));
"""

# Files that define a model's behaviour; everything else in a folder (READMEs, logs) is not identity.
_MODEL_FILES = ("*.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "quantstudy.json")


def content_key(**inputs) -> str:
    """Stable hash of JSON-able inputs (key order does not matter)."""
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def provenance(**extra) -> dict:
    import torch

    return {"quantstudy": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}


class ResultStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")   # readers never block the writer
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- per-item evaluation results ----------------------------------------------------------
    def done_items(self, model: str, task: str, task_version: str) -> set[str]:
        rows = self.db.execute("SELECT item_id FROM items WHERE model=? AND task=? AND task_version=?",
                               (model, task, task_version))
        return {r[0] for r in rows}

    def put_items(self, model: str, task_version: str, results: list[ItemResult]) -> None:
        now = time.time()
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO items VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [(model, r.task, task_version, r.item_id, r.prediction, int(r.correct), float(r.score),
                  r.loglik, int(r.tokens), json.dumps(r.extra, sort_keys=True, default=str), now)
                 for r in results])

    def get_items(self, model: str, task: str, task_version: str, item_ids=None) -> list[ItemResult]:
        rows = self.db.execute(
            "SELECT task, item_id, prediction, correct, score, loglik, tokens, extra FROM items "
            "WHERE model=? AND task=? AND task_version=?", (model, task, task_version))
        out = [ItemResult(task=t, item_id=i, prediction=p, correct=bool(c), score=s, loglik=ll, tokens=n,
                          extra=json.loads(e) if e else {}) for t, i, p, c, s, ll, n, e in rows]
        if item_ids is not None:
            order = {item: k for k, item in enumerate(item_ids)}
            out = sorted((r for r in out if r.item_id in order), key=lambda r: order[r.item_id])
        return out

    # --- any stage's result under the hash of its inputs --------------------------------------
    def get(self, key: str) -> dict | None:
        row = self.db.execute("SELECT result FROM results WHERE key=?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, kind: str, inputs: dict, result: dict, prov: dict | None = None,
            keep_order: bool = False) -> None:
        """Store `result` under `key`. Keys are sorted unless `keep_order` (a document whose
        order is its presentation, such as a study's results, which the report renders in order)."""
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?)",
                            (key, kind, json.dumps(inputs, sort_keys=True, default=str),
                             json.dumps(result, sort_keys=not keep_order, default=str),
                             json.dumps(prov or provenance(), sort_keys=True), time.time()))

    def latest(self, kind: str) -> dict | None:
        """The most recently written result of a kind (a study's assembled results)."""
        row = self.db.execute("SELECT result FROM results WHERE kind=? ORDER BY created DESC LIMIT 1",
                              (kind,)).fetchone()
        return None if row is None else json.loads(row[0])

    def count(self, kind: str | None = None) -> int:
        if kind is None:
            return self.db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        return self.db.execute("SELECT COUNT(*) FROM results WHERE kind=?", (kind,)).fetchone()[0]

    # --- model identity -------------------------------------------------------------------------
    def fingerprint(self, folder: str | Path) -> str:
        """sha256 over the model-defining files of a folder (names and bytes)."""
        folder = Path(folder).resolve()
        files = sorted({f for pattern in _MODEL_FILES for f in folder.glob(pattern) if f.is_file()})
        digest = hashlib.sha256()
        for f in files:
            digest.update(f.name.encode())
            digest.update(self._file_digest(f).encode())
        return digest.hexdigest()[:32]

    def _file_digest(self, path: Path) -> str:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        row = self.db.execute("SELECT digest FROM fingerprints WHERE path=? AND size=? AND mtime_ns=?", key).fetchone()
        if row:
            return row[0]
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO fingerprints VALUES (?,?,?,?)", (*key, h.hexdigest()))
        return h.hexdigest()
