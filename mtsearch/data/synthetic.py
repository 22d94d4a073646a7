"""The built-in synthetic dataset: real encoded videos whose class is a motion over time.

Classes come in time-reversed pairs (move_right / move_left, grow / shrink, ...): the reversed
class is rendered from the very same trajectory played backwards, so no single frame and no clip
read backwards tells a pair apart; only the direction of time does. Appearance (shape, texture,
colours, size, background) and clutter (distractor objects with their own motion, sensor noise)
vary per video. Written in the HMDB-51 layout so it goes through the same loader as the real set.

Every random choice draws from a generator seeded by (seed, class, video), so a seed gives the
same files whatever the number of worker processes.
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

from mtsearch.errors import InvalidInput

try:
    import fcntl
except ImportError:  # Windows: no flock; concurrent builds then race and the first rename wins
    fcntl = None  # type: ignore[assignment]

# Bump when the generator's output changes: the cache folder name carries it, so a new version
# builds a fresh set instead of reusing an old one.
VERSION = 1

SIZE = 112  # frame height and width: short side >= 102 (the `tiny` preset's), so no upscaling
FPS = 30
FRAMES_RANGE = (60, 90)  # 2-3 s at 30 fps
TEST_FRACTION = 0.3  # HMDB-51's 70/30 train/test split
SPLIT_DIR = "testTrainMulti_7030_splits"
INFO_FILE = "synthetic.yaml"  # written last: its presence means the set is complete

# Class pairs: (forward, reversed); the reversed class plays the forward trajectory backwards.
MOTION_PAIRS: tuple[tuple[str, str], ...] = (
    ("move_right", "move_left"),
    ("move_down", "move_up"),
    ("rotate_cw", "rotate_ccw"),
    ("grow", "shrink"),
    ("orbit_cw", "orbit_ccw"),
    ("speed_up", "slow_down"),
)
CLASS_NAMES: tuple[str, ...] = tuple(name for pair in MOTION_PAIRS for name in pair)
MAX_CLASSES = len(CLASS_NAMES)

_SHAPES = ("disk", "square", "triangle", "cross", "diamond")
_TEXTURES = ("stripes", "checker", "sectors")


# --- one video ----------------------------------------------------------------------------------

def _trajectory(motion: str, num_frames: int, radius: float, rng: np.random.Generator) -> dict:
    """Per-frame centre x/y, angle, scale of the main object for a forward motion (T,) each.

    Ranges keep the object inside the frame; the reversed class reverses these arrays.
    """
    tau = np.linspace(0.0, 1.0, num_frames)
    angle0 = rng.uniform(0, 2 * np.pi)
    drift = rng.uniform(-0.4, 0.4)  # a little rotation on every class, so rotation alone is not it
    angle = angle0 + drift * tau
    scale = np.full(num_frames, rng.uniform(0.85, 1.15))
    margin = radius * 1.2 + 4
    lo, hi = margin, SIZE - margin

    def span(length: float) -> tuple[float, float]:
        start = rng.uniform(lo, max(lo, hi - length))
        return start, start + min(length, hi - lo)

    if motion in ("move_right", "move_down"):
        a, b = span(rng.uniform(40, 75))
        along = a + (b - a) * tau
        across = np.full(num_frames, rng.uniform(lo, hi)) + rng.uniform(-6, 6) * tau
        x, y = (along, across) if motion == "move_right" else (across, along)
    elif motion == "rotate_cw":  # angle grows: clockwise on screen (y points down)
        x = np.full(num_frames, rng.uniform(lo, hi))
        y = np.full(num_frames, rng.uniform(lo, hi))
        angle = angle0 + rng.uniform(1.0, 2.0) * np.pi * tau
    elif motion == "grow":
        x = np.full(num_frames, rng.uniform(lo, hi)) + rng.uniform(-5, 5) * tau
        y = np.full(num_frames, rng.uniform(lo, hi)) + rng.uniform(-5, 5) * tau
        start = rng.uniform(0.45, 0.65)
        scale = start * np.exp(np.log(rng.uniform(1.6, 2.0) / start) * tau)
        # the largest size must fit: keep the centre far enough from the edges
        far = radius * scale[-1] * 1.2 + 2
        x, y = np.clip(x, far, SIZE - far), np.clip(y, far, SIZE - far)
    elif motion == "orbit_cw":
        orbit = rng.uniform(14, 26)
        cx = rng.uniform(lo + orbit, max(lo + orbit, hi - orbit))
        cy = rng.uniform(lo + orbit, max(lo + orbit, hi - orbit))
        phase = rng.uniform(0, 2 * np.pi) + rng.uniform(1.0, 1.8) * np.pi * tau
        x, y = cx + orbit * np.cos(phase), cy + orbit * np.sin(phase)
    elif motion == "speed_up":  # from rest, accelerating along a random heading
        heading = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(40, 70)
        dx, dy = np.cos(heading) * length, np.sin(heading) * length
        x0 = rng.uniform(lo + max(0, -dx), max(lo + max(0, -dx), hi - max(0, dx)))
        y0 = rng.uniform(lo + max(0, -dy), max(lo + max(0, -dy), hi - max(0, dy)))
        x, y = x0 + dx * tau**2, y0 + dy * tau**2
    else:
        raise ValueError(f"unknown motion {motion!r}")
    return {"x": x, "y": y, "angle": angle, "scale": scale}


def _appearance(rng: np.random.Generator, radius: float) -> dict:
    """A random object look: shape, texture, two colours, texture frequency."""
    colour_a = rng.integers(30, 256, 3).astype(np.float32)
    colour_b = np.clip(255 - colour_a + rng.normal(0, 40, 3), 0, 255).astype(np.float32)
    return {
        "shape": _SHAPES[rng.integers(len(_SHAPES))],
        "texture": _TEXTURES[rng.integers(len(_TEXTURES))],
        "frequency": float(rng.uniform(2.0, 4.0)),
        "colours": (colour_a, colour_b),
        "radius": radius,
    }


def _background(rng: np.random.Generator) -> np.ndarray:
    """Static textured background (H, W, 3) float32: a gradient plus low-frequency blobs."""
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    heading = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(heading) * xs + np.sin(heading) * ys  # (H, W)
    base = rng.uniform(20, 200, 3).astype(np.float32)
    tilt = rng.uniform(-60, 60, 3).astype(np.float32)
    waves = np.zeros((SIZE, SIZE), np.float32)
    for _ in range(3):
        fx, fy = rng.uniform(1, 5, 2)
        waves += np.sin(2 * np.pi * (fx * xs + fy * ys) + rng.uniform(0, 2 * np.pi))
    bg = base + ramp[..., None] * tilt + waves[..., None] * rng.uniform(5, 20, 3).astype(np.float32)
    return np.clip(bg, 0, 255)


def _draw(frame: np.ndarray, look: dict, x: float, y: float, angle: float, scale: float) -> None:
    """Paint one object into `frame` (H, W, 3) float32 in place, only over its bounding box."""
    r = look["radius"] * scale
    reach = int(np.ceil(r * 1.45)) + 1
    x0, x1 = max(0, int(x) - reach), min(SIZE, int(x) + reach + 1)
    y0, y1 = max(0, int(y) - reach), min(SIZE, int(y) + reach + 1)
    if x0 >= x1 or y0 >= y1:
        return
    dy, dx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx -= x
    dy -= y
    cos, sin = np.cos(angle), np.sin(angle)
    u = (cos * dx + sin * dy) / r  # object coordinates, unit radius
    v = (-sin * dx + cos * dy) / r
    shape = look["shape"]
    if shape == "disk":
        mask = u * u + v * v <= 1.0
    elif shape == "square":
        mask = np.maximum(np.abs(u), np.abs(v)) <= 0.8
    elif shape == "diamond":
        mask = np.abs(u) + np.abs(v) <= 1.0
    elif shape == "cross":
        abs_u, abs_v = np.abs(u), np.abs(v)
        mask = ((abs_u <= 0.35) & (abs_v <= 1.0)) | ((abs_v <= 0.35) & (abs_u <= 1.0))
    else:  # triangle pointing along +u
        mask = (u >= -0.6) & (np.abs(v) <= (1.0 - u) * 0.62)
    freq = look["frequency"]
    texture = look["texture"]
    if texture == "stripes":
        pick = np.sin(np.pi * freq * u) > 0
    elif texture == "checker":
        pick = (np.floor(freq * u) + np.floor(freq * v)) % 2 == 0
    else:  # sectors: three wedges, shows rotation even on a disk
        pick = (np.floor(np.arctan2(v, u) / (np.pi / 3)) % 2) == 0
    colour_a, colour_b = look["colours"]
    paint = np.where(pick[..., None], colour_a, colour_b)  # (h, w, 3)
    region = frame[y0:y1, x0:x1]
    region[mask] = paint[mask]


def _distractors(rng: np.random.Generator, num_frames: int) -> list[tuple[dict, dict]]:
    """Small objects moving at constant velocity with bounces and their own spin (clutter)."""
    out = []
    for _ in range(int(rng.integers(2, 5))):
        radius = float(rng.uniform(4, 8))
        look = _appearance(rng, radius)
        lo, hi = radius, SIZE - radius
        pos = rng.uniform(lo, hi, 2)
        vel = rng.normal(0, 0.9, 2)
        xs, ys = np.empty(num_frames), np.empty(num_frames)
        for t in range(num_frames):
            xs[t], ys[t] = pos
            pos = pos + vel
            for axis in range(2):  # bounce off the walls
                if pos[axis] < lo or pos[axis] > hi:
                    vel[axis] = -vel[axis]
                    pos[axis] = np.clip(pos[axis], lo, hi)
        spin = rng.uniform(-0.1, 0.1)
        angle = rng.uniform(0, 2 * np.pi) + spin * np.arange(num_frames)
        out.append((look, {"x": xs, "y": ys, "angle": angle, "scale": np.ones(num_frames)}))
    return out


def render_video(class_index: int, video_index: int, seed: int) -> np.ndarray:
    """The frames (T, H, W, 3) uint8 of one synthetic video, a pure function of its arguments."""
    pair, reverse = divmod(class_index, 2)
    rng = np.random.default_rng([seed, class_index, video_index])
    num_frames = int(rng.integers(FRAMES_RANGE[0], FRAMES_RANGE[1] + 1))
    radius = float(rng.uniform(11, 18))
    look = _appearance(rng, radius)
    path = _trajectory(MOTION_PAIRS[pair][0], num_frames, radius, rng)
    if reverse:
        path = {key: values[::-1] for key, values in path.items()}
    background = _background(rng)
    clutter = _distractors(rng, num_frames)
    noise_sigma = rng.uniform(2, 8)
    noise_bank = rng.normal(0, noise_sigma, (8, SIZE, SIZE, 3)).astype(np.float32)
    noise_pick = rng.integers(0, len(noise_bank), num_frames)
    # half the distractors pass in front of the main object, half behind
    behind = clutter[: len(clutter) // 2]
    front = clutter[len(clutter) // 2 :]
    frames = np.empty((num_frames, SIZE, SIZE, 3), np.uint8)
    for t in range(num_frames):
        frame = background.copy()
        for d_look, d_path in behind:
            _draw(frame, d_look, d_path["x"][t], d_path["y"][t], d_path["angle"][t], 1.0)
        _draw(frame, look, path["x"][t], path["y"][t], path["angle"][t], path["scale"][t])
        for d_look, d_path in front:
            _draw(frame, d_look, d_path["x"][t], d_path["y"][t], d_path["angle"][t], 1.0)
        frame += noise_bank[noise_pick[t]]
        np.clip(frame, 0, 255, out=frames[t], casting="unsafe")
    return frames


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
    out.chmod(0o755)  # mkdtemp made it private; the finished set is a normal, shareable folder


def write_synthetic(
    dir: str | os.PathLike[str],
    classes: int = 10,
    videos_per_class: int = 24,
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
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.build-", dir=target.parent))
    try:
        _build(tmp, classes, videos_per_class, seed, workers, progress)
        _publish(tmp, target, replace=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


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
    from mtsearch.paths import synthetic_dir

    parent = synthetic_dir(cache_dir)
    target = parent / f"v{VERSION}-seed{seed}"
    if (target / INFO_FILE).exists():
        return target
    parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(parent / f".{target.name}.lock"):
        if (target / INFO_FILE).exists():  # another process built it while we waited
            return target
        if target.exists():  # not ours and not complete (copied in by hand?): rebuild
            shutil.rmtree(target)
        for stale in parent.glob(f".{target.name}.build-*"):  # builds of crashed processes
            if fcntl is not None:
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.build-", dir=parent))
        try:
            _build(tmp, 10, 24, seed, None, progress)
            _publish(tmp, target, replace=False)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
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
