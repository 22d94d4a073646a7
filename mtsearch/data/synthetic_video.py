"""One video of the built-in synthetic set: its class is a motion over time.

Classes are motions, several in time-reversed pairs (move_down / move_up, grow / shrink, and
converge / diverge beyond the default six): the reversed class is rendered from the very same
kind of trajectory played backwards, so no single frame and no clip read backwards tells a pair
apart; only the direction of time does. Every class is unchanged by a left-right mirror
(training clips are flipped with p = 0.5 and keep their label, so a left/right or
clockwise/anticlockwise class would be unlearnable).
Appearance (shape, texture, colours, size, background) and clutter (small distractor objects
with their own slower motion, sensor noise) vary per video and carry no label information.

Motion is fast and keeps going through the whole video (several pixels per frame, objects wrap
around or respawn), so every 13-frame clip shows it clearly even at the `tiny` preset's
8-pixel trunk cells. Every random choice draws from a generator seeded by (seed, class, video),
so a video is a pure function of (class, video, seed), whatever process renders it.
"""

from __future__ import annotations

import numpy as np

SIZE = 112  # frame height and width: short side >= 102 (the `tiny` preset's), so no upscaling
FPS = 30
FRAMES_RANGE = (40, 56)  # 1.3-1.9 s at 30 fps: 3-5 test clips of 13 frames
SPEED_RANGE = (4.0, 7.0)  # main objects' speed in px/frame (distractors: about 1 px/frame)
RADIUS_RANGE = (14.0, 20.0)  # main objects' radius in px (distractors: 3-6 px)
WAVES = (3.0, 10.0)  # amplitude range of the background's blobs
GROW_LIFE = (8, 12)  # frames from a dot to full size (about 2-3 px/frame at the rim)

# (class name, motion, played backwards): a reversed class renders its motion's trajectory
# reversed in time. Classes without a partner are their own time reversal.
# `--classes N` takes the first N: the default six, then the harder ones (converge / diverge is
# the hardest for the `tiny` preset: a relation between two objects).
CLASSES: tuple[tuple[str, str, bool], ...] = (
    ("move_down", "move_down", False),
    ("move_up", "move_down", True),
    ("grow", "grow", False),
    ("shrink", "grow", True),
    ("slide", "slide", False),  # left or right (a mirror of one is the other)
    ("spin", "spin", False),  # turning on the spot, either way
    ("orbit", "orbit", False),  # a circle, either way
    ("shake", "shake", False),  # quick back and forth along a random axis
    ("converge", "converge", False),
    ("diverge", "converge", True),
)
CLASS_NAMES: tuple[str, ...] = tuple(name for name, _, _ in CLASSES)
MOTION_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (name, CLASS_NAMES[i + 1]) for i, (name, motion, backwards) in enumerate(CLASSES[:-1])
    if not backwards and CLASSES[i + 1][1] == motion and CLASSES[i + 1][2]
)
MAX_CLASSES = len(CLASS_NAMES)

_SHAPES = ("disk", "square", "triangle", "cross", "diamond")
_TEXTURES = ("stripes", "checker", "sectors")


def _reach(radius: float) -> float:
    """Half the side of the box an object of this radius paints into (see _draw)."""
    return radius * 1.45 + 1


def _track(look: dict, x: np.ndarray, y: np.ndarray, angle: np.ndarray, scale: np.ndarray,
           torus: bool = False, segment: np.ndarray | None = None) -> dict:
    """One object's look and per-frame state, arrays (T,) each.

    torus: positions are taken modulo the frame size and the object is drawn wrapped around the
    edges (leaving at the bottom while entering at the top), so a constant-velocity motion stays
    in view for the whole video.
    segment: per frame, which life of a respawning object this is (all zeros: one life).
    """
    if torus:
        x, y = np.mod(x, SIZE), np.mod(y, SIZE)
    if segment is None:
        segment = np.zeros(len(x), dtype=np.int64)
    return {"look": look, "x": x, "y": y, "angle": angle, "scale": scale, "torus": torus,
            "segment": segment}


def _glide(motion: str, num_frames: int, rng: np.random.Generator, bg_luma: float) -> list[dict]:
    """move_down / slide / spin / orbit / shake: 1-2 objects, each moving on its own."""
    t = np.arange(num_frames, dtype=np.float64)
    tracks = []
    for _ in range(int(rng.integers(1, 3))):
        radius = float(rng.uniform(*RADIUS_RANGE))
        look = _appearance(rng, radius, bg_luma)
        reach = _reach(radius)
        speed = rng.uniform(*SPEED_RANGE)
        across = rng.uniform(-0.5, 0.5)  # a slight sideways drift
        angle = rng.uniform(0, 2 * np.pi) + rng.uniform(-0.03, 0.03) * t
        x0, y0 = rng.uniform(0, SIZE, 2)
        if motion == "move_down":
            x, y = x0 + across * t, y0 + speed * t
        elif motion == "slide":
            heading = 1.0 if rng.random() < 0.5 else -1.0
            x, y = x0 + heading * speed * t, y0 + across * t
        elif motion == "spin":  # about 0.15-0.3 rad/frame either way, little translation
            x0, y0 = rng.uniform(reach, SIZE - reach, 2)
            x, y = x0 + across * t, y0 + rng.uniform(-0.5, 0.5) * t
            turn = rng.uniform(0.15, 0.3) * (1.0 if rng.random() < 0.5 else -1.0)
            angle = angle + turn * t
        elif motion == "orbit":  # a circle of radius 14-24 px at the usual speed
            orbit = rng.uniform(14, 24)
            way = 1.0 if rng.random() < 0.5 else -1.0
            phase = rng.uniform(0, 2 * np.pi) + way * speed / orbit * t
            x, y = x0 + orbit * np.cos(phase), y0 + orbit * np.sin(phase)
        elif motion == "shake":  # back and forth, 8-14 px each way, period 6-10 frames
            axis = rng.uniform(0, np.pi)
            swing = rng.uniform(8, 14) * np.sin(2 * np.pi * t / rng.uniform(6, 10))
            x = x0 + np.cos(axis) * swing + across * t
            y = y0 + np.sin(axis) * swing
        else:
            raise ValueError(f"unknown motion {motion!r}")
        tracks.append(_track(look, x, y, angle, np.full(num_frames, rng.uniform(0.9, 1.1)),
                             torus=True))
    return tracks


def _cycles(num_frames: int, life: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Respawning objects: per frame the cycle number and the progress u in [0, 1) of a cycle
    `life` frames long, starting at a random phase."""
    clock = np.arange(num_frames) + int(rng.integers(0, life))
    return clock // life, (clock % life) / life


def _grow(num_frames: int, rng: np.random.Generator, bg_luma: float) -> list[dict]:
    """Two objects, half a cycle apart, each growing from a dot to full size, then respawning
    elsewhere: every clip shows growth (played backwards: shrinking to nothing)."""
    tracks = []
    life = int(rng.integers(*GROW_LIFE))
    first_phase = int(rng.integers(0, life))
    for k in range(2):
        radius = float(rng.uniform(*RADIUS_RANGE)) * 1.2
        look = _appearance(rng, radius, bg_luma)
        clock = np.arange(num_frames) + first_phase + k * life // 2
        cycle, u = clock // life, (clock % life) / life
        spots = rng.uniform(radius * 0.6, SIZE - radius * 0.6, (int(cycle.max()) + 1, 2))
        small, big = rng.uniform(0.1, 0.2), rng.uniform(1.1, 1.3)
        scale = small * (big / small) ** u
        angle = rng.uniform(0, 2 * np.pi) + rng.uniform(-0.03, 0.03) * np.arange(num_frames)
        tracks.append(_track(look, spots[cycle, 0], spots[cycle, 1], angle, scale, segment=cycle))
    return tracks


def _converge(num_frames: int, rng: np.random.Generator, bg_luma: float) -> list[dict]:
    """Two objects approaching each other along a random axis until they meet, then a new pair
    appears elsewhere (played backwards: a pair appears at one spot and flies apart)."""
    speed = rng.uniform(*SPEED_RANGE)
    half = rng.uniform(32, 50)  # starting distance of each object from the meeting point
    life = max(6, round(half / speed))
    cycle, u = _cycles(num_frames, life, rng)
    cycles = int(cycle.max()) + 1
    axis = rng.uniform(0, np.pi, cycles)
    # meeting points that keep both starting points inside the frame
    extent = half * np.abs(np.stack([np.cos(axis), np.sin(axis)], axis=1)) + 4  # (cycles, 2)
    lo, hi = np.minimum(extent, SIZE / 2), np.maximum(SIZE - extent, SIZE / 2)
    meet = lo + (hi - lo) * rng.random((cycles, 2))
    along = half * (1.0 - u)  # (T,)
    dx, dy = np.cos(axis[cycle]) * along, np.sin(axis[cycle]) * along
    tracks = []
    for side in (-1.0, 1.0):
        radius = float(rng.uniform(*RADIUS_RANGE)) * 0.8
        look = _appearance(rng, radius, bg_luma)
        angle = rng.uniform(0, 2 * np.pi) + rng.uniform(-0.03, 0.03) * np.arange(num_frames)
        tracks.append(_track(look, meet[cycle, 0] + side * dx, meet[cycle, 1] + side * dy,
                             angle, np.full(num_frames, rng.uniform(0.9, 1.1)), segment=cycle))
    return tracks


def main_tracks(class_index: int, num_frames: int, rng: np.random.Generator,
                bg_luma: float = 128.0) -> list[dict]:
    """The class's objects over `num_frames` frames; a reversed class plays them backwards."""
    _, motion, backwards = CLASSES[class_index]
    if motion == "grow":
        tracks = _grow(num_frames, rng, bg_luma)
    elif motion == "converge":
        tracks = _converge(num_frames, rng, bg_luma)
    else:
        tracks = _glide(motion, num_frames, rng, bg_luma)
    if backwards:
        tracks = [{key: (value[::-1] if isinstance(value, np.ndarray) else value)
                   for key, value in track.items()} for track in tracks]
    return tracks


def _appearance(rng: np.random.Generator, radius: float, bg_luma: float = 128.0) -> dict:
    """A random object look: shape, texture, two colours, texture frequency.

    The first colour is on the other side of mid-grey from the background, so the object stands
    out whatever the background's colour.
    """
    colour_a = rng.integers(30, 256, 3).astype(np.float32)
    if (colour_a.mean() > 128) == (bg_luma > 128):
        colour_a = 285 - colour_a  # 30..255 -> 255..30
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
    amplitude = rng.uniform(*WAVES, 3).astype(np.float32)
    bg = base + ramp[..., None] * tilt + waves[..., None] * amplitude
    return np.clip(bg, 0, 255)


def _draw(frame: np.ndarray, look: dict, x: float, y: float, angle: float, scale: float) -> None:
    """Paint one object into `frame` (H, W, 3) float32 in place, only over its bounding box."""
    r = look["radius"] * scale
    reach = int(np.ceil(r * 1.45)) + 1
    x0, x1 = max(0, int(np.floor(x)) - reach), min(SIZE, int(np.floor(x)) + reach + 1)
    y0, y1 = max(0, int(np.floor(y)) - reach), min(SIZE, int(np.floor(y)) + reach + 1)
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


def _distractors(rng: np.random.Generator, num_frames: int, bg_luma: float) -> list[dict]:
    """Small, slower objects moving at constant velocity with bounces and spin (clutter)."""
    out = []
    for _ in range(int(rng.integers(2, 5))):
        radius = float(rng.uniform(3, 6))
        look = _appearance(rng, radius, bg_luma)
        lo, hi = radius, SIZE - radius
        pos = rng.uniform(lo, hi, 2)
        vel = rng.normal(0, 0.8, 2)
        xs, ys = np.empty(num_frames), np.empty(num_frames)
        for t in range(num_frames):
            xs[t], ys[t] = pos
            pos = pos + vel
            for axis in range(2):  # bounce off the walls
                if pos[axis] < lo or pos[axis] > hi:
                    vel[axis] = -vel[axis]
                    pos[axis] = np.clip(pos[axis], lo, hi)
        angle = rng.uniform(0, 2 * np.pi) + rng.uniform(-0.1, 0.1) * np.arange(num_frames)
        out.append(_track(look, xs, ys, angle, np.ones(num_frames)))
    return out


def _scene(class_index: int, video_index: int, seed: int
           ) -> tuple[np.random.Generator, np.ndarray, list[dict]]:
    """(the video's generator, its background, its main objects), drawn in the fixed order."""
    rng = np.random.default_rng([seed, class_index, video_index])
    num_frames = int(rng.integers(FRAMES_RANGE[0], FRAMES_RANGE[1] + 1))
    background = _background(rng)
    tracks = main_tracks(class_index, num_frames, rng, float(background.mean()))
    return rng, background, tracks


def object_tracks(class_index: int, video_index: int, seed: int) -> list[dict]:
    """The main objects of one video as `render_video` draws them: per object, arrays (T,) of the
    centre `x`, `y` (source pixels; pixel centres at integers), `angle`, `scale`, and `segment`
    (it changes where the object respawns elsewhere), plus `torus` (it wraps around the edges).
    The ground truth of the tracking metric."""
    return _scene(class_index, video_index, seed)[2]


def render_video(class_index: int, video_index: int, seed: int) -> np.ndarray:
    """The frames (T, H, W, 3) uint8 of one synthetic video, a pure function of its arguments."""
    rng, background, tracks = _scene(class_index, video_index, seed)
    num_frames = len(tracks[0]["x"])
    bg_luma = float(background.mean())
    clutter = _distractors(rng, num_frames, bg_luma)
    noise_sigma = rng.uniform(2, 6)
    noise_bank = rng.normal(0, noise_sigma, (8, SIZE, SIZE, 3)).astype(np.float32)
    noise_pick = rng.integers(0, len(noise_bank), num_frames)
    # half the distractors pass in front of the main objects, half behind
    layers = clutter[: len(clutter) // 2] + tracks + clutter[len(clutter) // 2 :]
    frames = np.empty((num_frames, SIZE, SIZE, 3), np.uint8)
    for t in range(num_frames):
        frame = background.copy()
        for track in layers:
            shifts = (0.0, -SIZE) if track["torus"] else (0.0,)
            for shift_x in shifts:
                for shift_y in shifts:
                    _draw(frame, track["look"], track["x"][t] + shift_x,
                          track["y"][t] + shift_y, track["angle"][t], track["scale"][t])
        frame += noise_bank[noise_pick[t]]
        np.clip(frame, 0, 255, out=frames[t], casting="unsafe")
    return frames
