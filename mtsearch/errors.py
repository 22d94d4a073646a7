"""The error types every layer shares; the CLI maps them to exit codes (2, 1 and a warning).

Two kinds of trial failure are kept apart: a failure of the configuration (an exception in the
training code, a NaN) is a result; a failure of the machine (out of GPU memory, a killed worker,
a full or broken disk) is not, and is retried or stops the study for `--resume`.
"""

from __future__ import annotations

import difflib
import errno
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_NO_VALUE = object()


class InvalidInput(Exception):
    """Bad user input: the CLI prints one `error:` line and exits 2.

    Rendered as `<file>: <dotted.key>: <what is wrong> (got <value>)`; file and key may be empty
    when they do not apply (a missing dataset folder has no key).
    """

    def __init__(self, file: str | Path | None, key: str | None, what: str, got: Any = _NO_VALUE):
        self.file = str(file) if file is not None else ""
        self.key = key or ""
        self.what = what
        self.got = got
        super().__init__(self.render())

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle with the message intact (Ray ships a trial's exception to the driver)."""
        args = (self.file or None, self.key or None, self.what)
        return (type(self), args if self.got is _NO_VALUE else (*args, self.got))

    def render(self) -> str:
        parts = [p for p in (self.file, self.key) if p]
        text = ": ".join(parts + [self.what])
        if self.got is not _NO_VALUE:
            text += f" (got {self.got!r})" if isinstance(self.got, str) else f" (got {self.got})"
        return text

    def with_file(self, file: str | Path) -> InvalidInput:
        """The same error attributed to `file` (for errors raised before the file was known)."""
        err = InvalidInput(file, self.key, self.what, self.got)
        err.__cause__ = self.__cause__
        return err


class VideoReadError(Exception):
    """A video that cannot be decoded; callers skip it with a warning that names it."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self.path), self.reason))


class GpuOutOfMemory(Exception):
    """A trial ran out of GPU memory: the driver retries it with a larger GPU share."""

    def __init__(self, share: float, detail: str):
        self.share, self.detail = share, detail
        super().__init__(f"out of GPU memory at a GPU share of {share:g}: {detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.share, self.detail))


# errors of a disk itself, not of what the program asked of it: retrying cannot help until it is fixed
_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})
_STORAGE_TEXTS = ("No space left on device", "Disk quota exceeded", "Read-only file system",
                  "Input/output error")
# other libraries' words for the same faults: SQLite (Optuna's optuna.db) says this for ENOSPC
_STORAGE_SYNONYMS = {"database or disk is full": "No space left on device"}


class StorageFull(Exception):
    """The study's disk failed (full, read-only, I/O error): the driver stops for `--resume`.

    `path` is what was being written; `reason` the system's words (`No space left on device`)."""

    def __init__(self, path: str | Path | None, reason: str, key: str | None = None,
                 needed: int | None = None, free: int | None = None):
        self.path = str(path) if path else ""
        self.reason = reason
        self.key = key or ""  # the setting that chose the disk (`data.cache_dir`), if one did
        self.needed = needed  # bytes the failed write needed, where known
        self.free: int | None = free  # bytes free when it failed (or the driver stopped)
        super().__init__(self.render(None) if key else f"{reason} writing {self.path}" if self.path else reason)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path or None, self.reason, self.key or None, self.needed, self.free))

    def render(self, resume: str | None) -> str:
        """The one `error:` line: what failed, the space needed and free, and how to go on."""
        what = "disk full" if "space" in self.reason or "quota" in self.reason else self.reason.lower()
        free = self.free if self.free is not None else free_bytes(self.path) if self.path else None
        sizes = [f"needs {_megabytes(self.needed)}" if self.needed is not None else "",
                 f"{_megabytes(free)} free" if free is not None else ""]
        room = f" ({', '.join(s for s in sizes if s)})" if any(sizes) else ""
        if self.key:
            text = f"{what} on {self.key} {self.path}{room}; free space there or set {self.key} to a larger disk"
        else:
            where = f" writing {self.path}" if self.path else ""
            text = f"{what}{where}{room}; {'free space' if what == 'disk full' else 'fix the disk'}"
        return f"{text}, then: {resume}" if resume else text


def _megabytes(count: int) -> str:
    """MB to one decimal, to three below 0.1 MB (a frame cache entry can need a few kB), GB above 100 MB."""
    if count >= 1e8:
        return f"{count / 1e9:.2f} GB"
    return f"{count / 1e6:.1f} MB" if count >= 1e5 else f"{count / 1e6:.3f} MB"


def storage_failure(exc: BaseException) -> StorageFull | None:
    """The disk fault behind `exc` (its cause chain included), or None for any other error."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, StorageFull):
            return current
        if isinstance(current, OSError) and current.errno in _STORAGE_ERRNOS:
            return StorageFull(current.filename, os.strerror(current.errno))
        text = str(current)
        for reason in _STORAGE_TEXTS:
            if reason in text:
                return StorageFull(getattr(current, "filename", None), reason)
        for words, reason in _STORAGE_SYNONYMS.items():
            if words in text:
                return StorageFull(None, reason)
        current = current.__cause__ or current.__context__
    return None


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the file system holding `path` (its nearest existing folder)."""
    here = Path(path)
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        return shutil.disk_usage(here).free
    except OSError:
        return None


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's CUDA out-of-memory error, or a cuBLAS/cuDNN allocation failure."""
    text = str(exc)
    return type(exc).__name__ == "OutOfMemoryError" or "CUDA out of memory" in text \
        or "ALLOC_FAILED" in text


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest option, or '' when nothing is close.

    A word that is the start of exactly one option (`keep` for `keep_checkpoints`) counts as close,
    however much shorter it is than the option."""
    options = list(options)
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if not close and len(word) >= 3:
        close = [o for o in options if o.startswith(word)]
        close = close if len(close) == 1 else []
    return f"; did you mean {close[0]!r}?" if close else ""
