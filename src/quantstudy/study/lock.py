"""One study at a time per folder.

Two `quantstudy study` runs on one folder would both resume the same jobs, start the same
vLLM servers and write the same report. The study holds an exclusive `flock` on
`<study>/study.lock` for as long as it runs; the kernel drops it when the process ends, by any
death (kill -9 included), so a lock is never stale. The holder's pid is written in the file
for the message a second run prints.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from quantstudy.errors import QuantstudyError

LOCK_FILE = "study.lock"


class StudyLock:
    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_FILE
        self.fd: int | None = None

    def __enter__(self) -> "StudyLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise QuantstudyError(f"{self.path.parent} is in use by another study (pid {holder}); wait for it to "
                                  "finish, stop it, or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)   # releases the lock; the file stays (removing it would race a waiter)
            self.fd = None
