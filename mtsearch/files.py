"""Atomic file writes: a reader sees the old file or the whole new one, never half a file.

Every write that matters goes through here (Parquet tables, space.yaml, checkpoints, the frame
cache): a temp file beside the target, fsynced, renamed over it. The temp file is created private
(mkstemp) and gets the umask's mode before the rename, so results stay readable by others.

Output paths are checked here too, before a command does any work: `check_output_dir` and
`check_output_file` refuse a path that cannot be written as one `InvalidInput` naming the option.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mtsearch.errors import InvalidInput


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A temp path beside `path` to write; on success it is fsynced and renamed over `path`.

    Readers see the old file or the whole new one, never half a file; on error the temp goes away.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's file is private; results are not
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (threads may be writing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write bytes or text via `atomic_output`."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_output(path) as tmp:
        tmp.write_bytes(payload)


def check_output_dir(path: str | Path, option: str) -> None:
    """Refuse an output folder that cannot be made or written, before any work and creating
    nothing: `InvalidInput` naming `option` (`--out`, `--trials-dir`, `DIR`) and the path.

    Refused: the path is a file; a parent on the way is a file; the folder, or the nearest existing
    parent it would be made in, is not writable (`os.access`: as root, permission bits do not
    refuse, but a read-only file system does).
    """
    path = Path(path)
    try:
        _check_dir(path, option)
    except OSError as exc:  # a parent that may not be searched (EACCES) is not a traceback
        raise InvalidInput(None, option, f"cannot reach it: {exc.strerror}", str(path)) from None


def _check_dir(path: Path, option: str) -> None:
    if path.is_dir():
        if not _writable(path):
            raise InvalidInput(None, option, "the folder is not writable" + _read_only(path), str(path))
        return
    if path.exists() or path.is_symlink():
        what = "a broken link" if path.is_symlink() and not path.exists() else "a file"
        raise InvalidInput(None, option, f"not a folder: {what} is in the way", str(path))
    blocker = _blocker(path.parent)
    if blocker:
        raise InvalidInput(None, option, f"cannot make the folder: {blocker}", str(path))


def check_output_file(path: str | Path, option: str) -> None:
    """Refuse an output file path that cannot be written: a folder is in the way, or its folder
    cannot be made or written (as `check_output_dir`). Files are replaced atomically (a temp file
    beside them), so of an existing file only its folder needs to be writable."""
    path = Path(path)
    try:
        is_dir, blocker = path.is_dir(), _blocker(path.parent)
    except OSError as exc:
        raise InvalidInput(None, option, f"cannot reach it: {exc.strerror}", str(path)) from None
    if is_dir:
        raise InvalidInput(None, option, "is a folder, expected a file path", str(path))
    if blocker:
        raise InvalidInput(None, option, f"cannot write the file: {blocker}", str(path))


def _blocker(folder: Path) -> str | None:
    """Why files cannot be written in `folder`, made with its parents where missing; None if they can."""
    here = folder
    while not here.is_dir():
        if here.exists() or here.is_symlink():
            kind = "a broken link" if not here.exists() else "a file"
            return f"{str(here)!r} is {kind}"
        if here.parent == here:
            return None
        here = here.parent
    if not _writable(here):
        return f"{str(here)!r} is not writable{_read_only(here)}"
    return None


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def _read_only(path: Path) -> str:
    """` (read-only file system)` where that is the reason, so nobody hunts permission bits."""
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return " (read-only file system)"
    except OSError:
        pass
    return ""


def disk_usage(path: str | Path) -> int:
    """Bytes of the regular files under `path` (what a study costs on disk)."""
    total = 0
    for root, _, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:  # removed while walking
                pass
    return total


def human_bytes(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"
