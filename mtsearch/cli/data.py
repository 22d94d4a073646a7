"""`mtsearch data synth` (write the synthetic set) and `mtsearch data check` (index, check)."""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mtsearch.cli import EXIT_FAILED, EXIT_OK
from mtsearch.errors import InvalidInput
from mtsearch.files import check_output_dir

_SHORT_SHOWN = 40  # short videos still train (loop-padded): name the first few, count the rest


@contextmanager
def _progress(console: Console, what: str) -> Iterator[Callable[[int, int], None]]:
    """A transient progress bar on stderr; yields the `progress(done, total)` callback.

    auto_refresh=False keeps rich from starting a thread, so the synthetic builder may fork.
    """
    bar = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console, transient=True, auto_refresh=False,
                   disable=not console.is_terminal)
    task = bar.add_task(what, total=None)
    last = [0.0]

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)
        now = time.monotonic()
        if now - last[0] > 0.1 or done == total:
            last[0] = now
            bar.refresh()

    with bar:
        yield update


def _size_mb(root: Path) -> float:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 1e6


def cmd_synth(args: argparse.Namespace) -> int:
    from mtsearch.data.datasets import load_index
    from mtsearch.data.synthetic import DEFAULT_CLASSES, DEFAULT_VIDEOS_PER_CLASS, write_synthetic
    from mtsearch.data.synthetic_video import MOTION_PAIRS

    classes = DEFAULT_CLASSES if args.classes is None else args.classes
    videos_per_class = (
        DEFAULT_VIDEOS_PER_CLASS if args.videos_per_class is None else args.videos_per_class
    )
    check_output_dir(Path(args.dir).expanduser(), "DIR")
    out, err = Console(), Console(stderr=True)
    start = time.monotonic()
    with _progress(err, "writing videos") as progress:
        root = write_synthetic(args.dir, classes, videos_per_class, args.seed, progress=progress)
    seconds = time.monotonic() - start
    index = load_index("synthetic", root, 1)
    table = Table(title=f"synthetic set, seed {args.seed}, split 1")
    for column in ("id", "class", "time-reversal of", "train", "test"):
        table.add_column(column, justify="right" if column in ("id", "train", "test") else "left")
    partners = {a: b for pair in MOTION_PAIRS for a, b in (pair, pair[::-1])}
    for label, name in enumerate(index.classes):
        partner = partners.get(name, "itself")  # slide, spin, orbit, shake: their own reversal
        table.add_row(str(label), name, partner,
                      str(sum(v.label == label for v in index.train)),
                      str(sum(v.label == label for v in index.test)))
    out.print(table)
    out.print(f"wrote {classes * videos_per_class} videos ({classes} classes x {videos_per_class}) "
              f"to {root} in {seconds:.1f} s, {_size_mb(root):.1f} MB", soft_wrap=True,
              highlight=False)
    out.print(f"check it with: mtsearch data check --dataset synthetic {root}", soft_wrap=True,
              highlight=False)
    return EXIT_OK


GROUPING = {"ucf101": "gXX groups", "hmdb51": "source videos"}


def _check_flags(args: argparse.Namespace) -> None:
    if args.clip_frames < 1:
        raise InvalidInput(None, "--clip-frames", "must be >= 1", args.clip_frames)
    if args.fps is not None and not 0 < args.fps < math.inf:
        raise InvalidInput(None, "--fps", "must be a number > 0", args.fps)
    if not 0 <= args.val_fraction < 1:
        raise InvalidInput(None, "--val-fraction", "must be in [0, 1)", args.val_fraction)


def _counts_table(classes: list[str], train_checks: list[Any], test_checks: list[Any], val_names: set[str],
                  clip_frames: int) -> Table:
    """Usable videos per class and part (train, val, test), unreadable and short ones, totals."""
    checks = train_checks + test_checks
    table = Table()
    for column in ("id", "class", "train", "val", "test", "unreadable", "short"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for label, name in enumerate(classes):
        mine = [c for c in checks if c.item.label == label]
        table.add_row(
            str(label), name,
            str(sum(c.usable and c.item.label == label and c.item.name not in val_names
                    for c in train_checks)),
            str(sum(c.usable and c.item.label == label and c.item.name in val_names
                    for c in train_checks)),
            str(sum(c.usable and c.item.label == label for c in test_checks)),
            str(sum(not c.usable for c in mine) or ""),
            str(sum(c.usable and c.frames is not None and c.frames < clip_frames
                    for c in mine) or ""),
        )
    usable_train = sum(c.usable for c in train_checks)
    usable_test = sum(c.usable for c in test_checks)
    usable_val = sum(c.usable and c.item.name in val_names for c in train_checks)
    table.add_section()
    table.add_row("", "total", str(usable_train - usable_val), str(usable_val), str(usable_test),
                  str(sum(not c.usable for c in checks)),
                  str(sum(c.usable and (c.frames or 0) < clip_frames for c in checks)))
    return table


def _print_problems(out: Console, checks: list[Any], clip_frames: int, fps: float | None) -> None:
    """The unreadable videos (trials skip them) and those shorter than a clip (loop-padded)."""
    unreadable = [c for c in checks if not c.usable]
    if unreadable:
        unreadable.sort(key=lambda c: c.item.name)
        out.print(f"[bold red]unreadable videos ({len(unreadable)}), skipped by trials:[/]")
        for c in unreadable:
            out.print(f"  {c.item.name}: {c.error}", markup=False, highlight=False, soft_wrap=True)
    at = f" at {fps:g} fps" if fps else ""
    short = [c for c in checks if c.usable and c.frames is not None and c.frames < clip_frames]
    if short:
        out.print(f"[bold yellow]shorter than a clip of {clip_frames} frames{at} "
                  f"({len(short)}), loop-padded by trials:[/]")
        short.sort(key=lambda c: c.item.name)
        for c in short[:_SHORT_SHOWN]:
            out.print(f"  {c.item.name}: {c.frames} frames", markup=False, highlight=False)
        if len(short) > _SHORT_SHOWN:
            out.print(f"  ... and {len(short) - _SHORT_SHOWN} more", highlight=False)


def _print_listing(out: Console, index: Any, checks: list[Any]) -> None:
    """Listed, missing on disk, unreadable, usable: the counts a copy of a dataset is judged by."""
    from mtsearch.data.datasets import COUNT_MISSING

    missing = index.missing
    if missing and index.dataset in COUNT_MISSING:  # not warned one by one: named here
        out.print(f"[yellow]listed but missing on disk ({len(missing)}), skipped:[/]")
        for name in sorted(missing)[:_SHORT_SHOWN]:
            out.print(f"  {name}", markup=False, highlight=False, soft_wrap=True)
        if len(missing) > _SHORT_SHOWN:
            out.print(f"  ... and {len(missing) - _SHORT_SHOWN} more", highlight=False)
    elif missing:
        out.print(f"[yellow]listed but missing on disk: {len(missing)}[/] (named above)")
    unreadable = sum(not c.usable for c in checks)
    out.print(f"listed {index.listed_count}: {len(missing)} missing on disk, {unreadable} unreadable, "
              f"{len(checks) - unreadable} usable", highlight=False)
    for name, count in index.unused.items():
        out.print(f"{name}: {count} listed, not used (no labels to test against)", highlight=False, soft_wrap=True)


def _print_flips(out: Console, index: Any) -> None:
    """The mirrored class pairs `data.flip: swap` exchanges, and the classes it never flips."""
    from mtsearch.config import TrialConfig
    from mtsearch.data.flips import mirror_pairs, one_sided

    pairs = mirror_pairs(index.classes)
    if not pairs and index.dataset != "ssv2":
        return
    default = TrialConfig.from_mapping({"data.dataset": index.dataset}).flip
    out.print(f"flip pairs ({len(pairs)}; data.flip: swap gives a flipped clip its mirror's class; "
              f"default here: {default}):", highlight=False, soft_wrap=True)
    for a, b in pairs:
        out.print(f"  {index.classes[a]} <-> {index.classes[b]}", markup=False, highlight=False,
                  soft_wrap=True)
    sided = one_sided(index.classes)
    if sided:
        out.print(f"naming a side without a mirrored class ({len(sided)}), never flipped under swap: "
                  + "; ".join(index.classes[c] for c in sided), markup=False, highlight=False,
                  soft_wrap=True)


def _print_cache_need(out: Console, err: Console, args: argparse.Namespace, index: Any,
                      checks: list[Any]) -> None:
    """The frame cache the dataset needs at these settings, and whether the disk has it."""
    from dataclasses import replace

    from mtsearch.config import TrialConfig
    from mtsearch.data.cache import FrameCache
    from mtsearch.data.cache_usage import estimate_need
    from mtsearch.files import human_bytes
    from mtsearch.paths import frames_dir

    fps = args.fps if args.fps is not None else TrialConfig.from_mapping({"data.dataset": index.dataset}).fps
    if args.fps is None and fps is not None:  # checked at the source rate: count frames at `fps`
        checks = [replace(c, frames=math.ceil(c.frames * min(1.0, fps / c.rate)))
                  if c.usable and c.frames and c.rate else c for c in checks]
    cache = FrameCache(frames_dir(args.cache_dir), format=args.cache_format)
    need = estimate_need(checks, cache, fps, args.short_side)
    at = "source fps" if fps is None else f"{fps:g} fps"
    how = (f"measured on {need.sampled} of its videos" if cache.format == "jpeg" else "exact")
    fmt = f"jpeg q{cache.quality}" if cache.format == "jpeg" else "raw"
    free = f"{human_bytes(need.free)} free" if need.free is not None else "free space unknown"
    out.print(f"frame cache at {at}, short side {args.short_side}, {fmt} ({how}): needs "
              f"{human_bytes(need.total)} for {need.videos} videos, {human_bytes(need.cached)} of it "
              f"cached; {free} on {cache.root}", highlight=False, soft_wrap=True)
    if not need.fits:
        err.print(f"[yellow]warning:[/] the frame cache will not fit: {human_bytes(need.missing)} more "
                  f"needed, {human_bytes(need.free)} free on {cache.root}; set data.cache_dir (--cache-dir) "
                  "to a larger disk" + (", or use data.cache_format: jpeg" if cache.format == "raw" else ""),
                  highlight=False, soft_wrap=True)


def cmd_cache(args: argparse.Namespace) -> int:
    """The cache's entries per dataset and setting; `--clean` removes what nothing can read."""
    from mtsearch.data.cache_usage import clean, inventory
    from mtsearch.files import human_bytes
    from mtsearch.paths import frames_dir

    if args.all and not args.clean:
        raise InvalidInput(None, "--all", "goes with --clean (remove every entry)")
    out = Console()
    root = frames_dir(args.cache_dir)
    if args.clean:
        removed, freed = clean(root, everything=args.all)
        out.print(f"removed {removed} files ({human_bytes(freed)}) from {root}", highlight=False,
                  soft_wrap=True)
    groups = inventory(root)
    table = Table(title=f"frame cache: {root}")
    for column in ("dataset", "setting", "entries", "size", "stale"):
        table.add_column(column, justify="left" if column in ("dataset", "setting") else "right")
    for group in groups:
        stale = f"{group.stale} ({human_bytes(group.stale_bytes)})" if group.stale else ""
        table.add_row(group.dataset, group.setting, str(group.entries), human_bytes(group.bytes), stale)
    out.print(table)
    total = sum(g.bytes for g in groups)
    stale = sum(g.stale_bytes for g in groups)
    out.print(f"{sum(g.entries for g in groups)} entries, {human_bytes(total)}"
              + (f"; {human_bytes(stale)} stale (videos changed or gone): mtsearch data cache --clean"
                 if stale else ""), highlight=False, soft_wrap=True)
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from mtsearch.data.datasets import LAYOUTS, check_videos, detect_layout, load_index
    from mtsearch.data.splits import carve

    _check_flags(args)
    out, err = Console(), Console(stderr=True)
    root = args.root
    if args.dataset is None:
        args.dataset = "synthetic" if root is None else (detect_layout(root) or "hmdb51")
    if root is None:
        if args.dataset != "synthetic":
            raise InvalidInput(None, "ROOT",
                               f"a dataset root is required for --dataset {args.dataset} "
                               f"(expected layout: {LAYOUTS[args.dataset]}); "
                               f"or use --dataset synthetic")
        from mtsearch.data.synthetic import ensure_synthetic

        with _progress(err, "building the synthetic set") as progress:
            root = ensure_synthetic(progress=progress)

    warnings: list[str] = []
    index = load_index(args.dataset, root, args.split, warn=warnings.append)
    for line in warnings:
        err.print(f"[yellow]warning:[/] {line}", markup=True, highlight=False)
    split = carve(index, args.val_fraction)  # how a new study carves (data.val_carving: closest)
    if args.show_split:
        for item in sorted(getattr(split, args.show_split), key=lambda i: i.name):
            out.print(item.name, markup=False, highlight=False, soft_wrap=True)
        return EXIT_OK
    val_names = {item.name for item in split.val}
    items = index.train + index.test
    start = time.monotonic()
    with _progress(err, "checking videos") as progress:
        checks = check_videos(items, args.clip_frames, args.fps, decode=args.decode,
                              progress=progress)
    seconds = time.monotonic() - start
    train_checks, test_checks = checks[: len(index.train)], checks[len(index.train):]

    out.print(f"{args.dataset} split {args.split}: {index.root}", soft_wrap=True, highlight=False)
    out.print(_counts_table(index.classes, train_checks, test_checks, val_names, args.clip_frames))
    usable_train = sum(c.usable for c in train_checks)
    usable_test = sum(c.usable for c in test_checks)
    _print_problems(out, checks, args.clip_frames, args.fps)
    _print_listing(out, index, checks)
    _print_flips(out, index)
    out.print(f"validation: the whole {GROUPING.get(index.dataset, 'files')} that come closest to "
              f"{args.val_fraction:g} of each class's training videos, the same for every trial of split "
              f"{args.split} (data.val_fraction; list them with --show-split val)", highlight=False,
              soft_wrap=True)
    if split.train_only and args.val_fraction > 0:
        out.print(f"[yellow]too small to give validation videos, kept whole in training "
                  f"({len(split.train_only)}):[/] " + ", ".join(split.train_only), soft_wrap=True)
    if split.unparsed:
        shown = ", ".join(split.unparsed[:10]) + (f", ... ({len(split.unparsed) - 10} more)"
                                                  if len(split.unparsed) > 10 else "")
        out.print(f"[yellow]names that do not parse into their {GROUPING.get(index.dataset, 'group')} "
                  f"({len(split.unparsed)}), each its own group for the validation split:[/] " + shown,
                  soft_wrap=True)
    how = "decoded in full" if args.decode else "headers, decoding where not conclusive"
    in_val = [item.name in val_names for item in index.train]  # the table's train and val columns
    val_usable = sum(c.usable for c, v in zip(train_checks, in_val) if v)
    out.print(f"{usable_train + usable_test} of {len(checks)} videos usable "
              f"(train {usable_train - val_usable}/{len(train_checks) - sum(in_val)}, "
              f"val {val_usable}/{sum(in_val)}, test {usable_test}/{len(test_checks)}), "
              f"{len(index.classes)} classes; checked in {seconds:.1f} s ({how})",
              highlight=False, soft_wrap=True)
    _print_cache_need(out, err, args, index, checks)
    if usable_train == 0 or usable_test == 0:
        counts = (("train", usable_train), ("test", usable_test))
        empty = " and ".join(name for name, count in counts if count == 0)
        err.print(f"error: no usable {empty} videos in {index.root}", markup=False, highlight=False)
        return EXIT_FAILED
    return EXIT_OK
