"""The built-in synthetic dataset: real encoded videos whose class is a motion over time.

Each video is rendered by `synthetic_video` (the classes and their motions live there); this
module writes the set in the HMDB-51 layout, so it goes through the same loader as the real set,
with its split files and an info file, and keeps the default set in the cache folder. A seed gives
the same files whatever the number of worker processes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from mtsearch.data.synthetic_video import (
    CLASS_NAMES,
    FPS,
    MAX_CLASSES,
    SIZE,
    render_video,
)
from mtsearch.errors import InvalidInput
from mtsearch.files import current_umask

try:
    import fcntl
except ImportError:  # Windows: no flock; concurrent builds then race and the first rename wins
    fcntl = None  # type: ignore[assignment]

# Bump when the generator's output changes (here or in `synthetic_video`): the cache folder name
# carries it, so a new version builds a fresh set instead of reusing an old one.
VERSION = 3

TEST_FRACTION = 0.3  # HMDB-51's 70/30 train/test split
SPLIT_DIR = "testTrainMulti_7030_splits"
INFO_FILE = "synthetic.yaml"  # written last: its presence means the set is complete
# 6 x 40 videos: 168 training clips per epoch (about 4 s on one core with the `tiny` preset)
DEFAULT_CLASSES = 6
DEFAULT_VIDEOS_PER_CLASS = 40


# --- one video file --------------------------------------------------------------------------

def video_name(class_name: str, video_index: int) -> str:
    return f"{class_name}_{video_index:03d}.avi"


def _write_one(task: tuple[Path, int, int, int]) -> str:
    """Worker: render and encode one video (top level so process pools can pickle it)."""
    from mtsearch.data.video import write_video

    path, class_index, video_index, seed = task
    write_video(path, render_video(class_index, video_index, seed), fps=FPS, bit_rate=600_000)
    return path.name


# --- the whole set --------------------------------------------------------------------------------

def _check_sizes(classes: int, videos_per_class: int) -> None:
    if isinstance(classes, bool) or not isinstance(classes, int) or not 2 <= classes <= MAX_CLASSES:
        raise InvalidInput(None, "--classes", f"must be an integer from 2 to {MAX_CLASSES}",
                           classes)
    if (isinstance(videos_per_class, bool) or not isinstance(videos_per_class, int)
            or videos_per_class < 2):
        raise InvalidInput(None, "--videos-per-class",
                           "must be an integer >= 2 (one train, one test)", videos_per_class)


def split_lines(class_index: int, videos_per_class: int, seed: int, split: int) -> list[str]:
    """HMDB-51 split-file lines (`<video>.avi <1|2> `, trailing space like the official files).

    Each split is its own random 70/30 partition of the class's videos.
    """
    rng = np.random.default_rng([seed, 1000 + split, class_index])
    num_test = min(videos_per_class - 1, max(1, round(TEST_FRACTION * videos_per_class)))
    test = set(rng.permutation(videos_per_class)[:num_test].tolist())
    name = CLASS_NAMES[class_index]
    return [f"{video_name(name, i)} {2 if i in test else 1} " for i in range(videos_per_class)]


def _build(
    out: Path, classes: int, videos_per_class: int, seed: int, workers: int | None,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Write the whole set into the (empty) folder `out`; INFO_FILE last."""
    tasks = [
        (out / CLASS_NAMES[c] / video_name(CLASS_NAMES[c], i), c, i, seed)
        for c in range(classes) for i in range(videos_per_class)
    ]
    for c in range(classes):
        (out / CLASS_NAMES[c]).mkdir(parents=True, exist_ok=True)
    splits = out / SPLIT_DIR
    splits.mkdir(parents=True, exist_ok=True)
    for c in range(classes):
        for k in (1, 2, 3):
            text = "\n".join(split_lines(c, videos_per_class, seed, k)) + "\n"
            (splits / f"{CLASS_NAMES[c]}_test_split{k}.txt").write_bytes(text.encode("ascii"))
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if len(tasks) >= 16 else 1
    done = 0
    if workers <= 1:
        for task in tasks:
            _write_one(task)
            done += 1
            if progress:
                progress(done, len(tasks))
    else:
        import multiprocessing
        import threading

        # fork is fast and works from any caller (scripts, stdin, notebooks), but a process that
        # runs other threads (Ray workers, rich progress) may copy held locks: spawn then.
        method = "fork" if threading.active_count() == 1 and os.name == "posix" else "spawn"
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
            for _ in pool.map(_write_one, tasks, chunksize=4):
                done += 1
                if progress:
                    progress(done, len(tasks))
    info = (
        f"generator: mtsearch synthetic v{VERSION}\nseed: {seed}\nclasses: {classes}\n"
        f"videos_per_class: {videos_per_class}\nfps: {FPS}\nsize: {SIZE}\n"
        f"class_names: [{', '.join(CLASS_NAMES[:classes])}]\n"
    )
    (out / INFO_FILE).write_text(info, encoding="utf-8")
    out.chmod(0o777 & ~current_umask())  # mkdtemp made it private; the set is shareable


def write_synthetic(
    dir: str | os.PathLike[str],
    classes: int = DEFAULT_CLASSES,
    videos_per_class: int = DEFAULT_VIDEOS_PER_CLASS,
    seed: int = 0,
    *,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the synthetic dataset to `dir` (HMDB-51 layout) and return it.

    Built in a temporary sibling folder and renamed into place, so `dir` is never half written.
    An existing `dir` must be empty or an earlier synthetic set (which is replaced).
    workers: processes (None: all cores for sets of 16+ videos). progress(done, total) per video.
    """
    _check_sizes(classes, videos_per_class)
    target = Path(dir).expanduser()
    if target.exists():
        if not target.is_dir():
            raise InvalidInput(target, None, "exists and is not a folder")
        if any(target.iterdir()) and not (target / INFO_FILE).exists():
            raise InvalidInput(target, None, "folder is not empty and holds no synthetic set; "
                                             "choose a new or empty folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    _build_and_publish(target, classes, videos_per_class, seed, workers, progress, replace=True)
    return target


def _build_and_publish(
    target: Path,
    classes: int,
    videos_per_class: int,
    seed: int,
    workers: int | None,
    progress: Callable[[int, int], None] | None,
    replace: bool,
) -> None:
    """Build in a hidden temp folder beside `target`, then rename it into place (see _publish)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.build-", dir=target.parent))
    try:
        _build(tmp, classes, videos_per_class, seed, workers, progress)
        _publish(tmp, target, replace=replace)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, target: Path, replace: bool) -> bool:
    """Rename the finished `tmp` to `target`; True if ours is now in place.

    replace=False: someone else's complete set at `target` wins and ours is dropped.
    """
    try:
        os.rename(tmp, target)  # atomic; fails if target is a non-empty folder
        return True
    except OSError:
        if not target.exists():
            raise
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
        os.rename(tmp, target)
        return True
    if not replace and (target / INFO_FILE).exists():
        return False
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return True


def builtin_set(cache_dir: str | os.PathLike[str] | None = None, seed: int = 0) -> Path:
    """Where the default synthetic set lives (built or not)."""
    from mtsearch.paths import synthetic_dir

    return synthetic_dir(cache_dir) / f"v{VERSION}-seed{seed}"


def builtin_set_ready(cache_dir: str | os.PathLike[str] | None = None, seed: int = 0) -> bool:
    return (builtin_set(cache_dir, seed) / INFO_FILE).exists()


def ensure_synthetic(
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """The default synthetic set in the cache folder, built on first use and reused afterwards.

    Safe when several processes call it at once: a file lock makes one build while the others
    wait, and the build is renamed into place only when complete (a crashed build leaves no
    half set). Where file locks are unavailable the first finished build wins.
    """
    target = builtin_set(cache_dir, seed)
    if (target / INFO_FILE).exists():
        return target
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(parent / f".{target.name}.lock"):
        if (target / INFO_FILE).exists():  # another process built it while we waited
            return target
        if target.exists():  # not ours and not complete (copied in by hand?): rebuild
            shutil.rmtree(target)
        for stale in parent.glob(f".{target.name}.build-*"):  # builds of crashed processes
            if fcntl is not None:
                shutil.rmtree(stale, ignore_errors=True)
        _build_and_publish(target, DEFAULT_CLASSES, DEFAULT_VIDEOS_PER_CLASS, seed, None, progress,
                           replace=False)
    return target


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` (POSIX flock; a no-op without fcntl)."""
    if fcntl is None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
