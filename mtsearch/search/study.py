"""A study's folder, `trials/<name>/`: created or reopened under a lock, its space kept.

One driver at a time (an advisory lock holding the driver's pid); a resumed study keeps its
space, except that its count may grow (an extension) and preset-decided values stay as recorded.
"""

from __future__ import annotations

import fcntl
import importlib
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from mtsearch.errors import InvalidInput
from mtsearch.records import FLAT_SEARCH_MODULES, MOVED_MODULES, adopt_recorded
from mtsearch.space import SpaceSpec, load_study_space

LOCK_FILE = ".lock"
SPACE_FILE = "space.yaml"
TUNE_DIR = "tune"  # Ray Tune's state (what --resume restores) and its kept checkpoints
ADOPTED_CHECKPOINT = "adopted_checkpoint"  # in a trial's Tune folder: where a trial Tune lost goes on from


def study_dir_for(spec: SpaceSpec, trials_dir: str | Path) -> Path:
    return Path(trials_dir) / spec.name


def open_study(
    spec: SpaceSpec, trials_dir: Path, resume: bool
) -> tuple[SpaceSpec, Path, int, bool, int | None]:
    """Create or reopen `trials/<name>/` and hold its lock; refuse a study in use or a clobber.

    A resumed study keeps the preset-decided values its space.yaml recorded (`adopt_recorded`), so
    a newer version's defaults never change a study half way (a study from before validation splits
    keeps selecting on the test split). The last value is the study's count
    when `spec` raises it (an extension), else None.
    """
    study_dir = study_dir_for(spec, trials_dir)
    existed = study_dir.exists() and any(study_dir.iterdir())
    study_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(study_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        refusal = _in_use(fd, study_dir)
        os.close(fd)
        raise refusal from None
    try:
        spec, extend_from = _reopened(spec, study_dir, existed, resume)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return spec, study_dir, fd, not existed, extend_from


def check_study(spec: SpaceSpec, trials_dir: Path, resume: bool) -> None:
    """`open_study`'s refusals, writing nothing: run before a cluster is started or joined, so
    that a study that exists, is in use or has another space is refused at once."""
    study_dir = study_dir_for(spec, trials_dir)
    if not (study_dir.is_dir() and any(study_dir.iterdir())):
        return
    lock = study_dir / LOCK_FILE
    if lock.is_file():
        fd = os.open(lock, os.O_RDONLY)
        try:
            try:  # shared: it fails only while a driver holds the study
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _in_use(fd, study_dir) from None
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    _reopened(spec, study_dir, True, resume)


def _in_use(fd: int, study_dir: Path) -> InvalidInput:
    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
    return InvalidInput(study_dir, None, f"study is in use by another mtsearch driver (pid {holder}); "
                        "wait for it to finish or choose another --name")


def _reopened(spec: SpaceSpec, study_dir: Path, existed: bool, resume: bool) -> tuple[SpaceSpec, int | None]:
    """The spec a reopened study runs (its recorded values adopted) and its count before an
    extension; refuses a clobber, a smaller count and a changed space."""
    if existed and not resume:
        raise InvalidInput(study_dir, None, "study already exists; add --resume to continue it "
                           "or pick a new --name")
    if not (existed and (study_dir / SPACE_FILE).exists()):
        return spec, None
    saved = load_study_space(study_dir)
    spec = replace(spec, base=adopt_recorded(spec.base, saved.base))
    if "eval.every" not in spec.base_overrides:  # a default: the study evaluates as it recorded
        spec = replace(spec, base=spec.base.with_overrides(  # (before rungs, every 2 epochs)
            {"eval.every": saved.base.eval.every, "eval.at": saved.base.eval.at}, "<recorded>"))
    if spec.count < saved.count:
        raise InvalidInput(None, spec.count_flag, f"the study {study_dir} already has "
                           f"{saved.count}; give {saved.count} or more to extend it", spec.count)
    if saved.identity() != spec.identity():
        changed = [k for k in spec.identity() if saved.identity().get(k) != spec.identity().get(k)]
        raise InvalidInput(spec.source, ", ".join(changed) or None,
                           f"differs from the study's {study_dir / SPACE_FILE}; a resumed study keeps "
                           "its space: restore the file or pick a new --name")
    return spec, (saved.count if spec.count > saved.count else None)


def release(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def mend_tune_checkpoints(tune_dir: Path) -> list[str]:
    """Before `--resume`: a trial whose saved Tune state names a checkpoint folder that is gone
    gets the checkpoint Tune kept for it copied there; returns those trials' ids.

    Tune keeps one checkpoint a trial, deleting the older one as a newer one is reported, and saves
    its state every 2 s: a kill in between leaves the state naming the deleted folder, and Tune
    would fail that trial on every resume. The kept checkpoint is a newer one Tune had received,
    so the trial goes on from it. Best effort: a state this code cannot read is left to Tune.
    """
    import json

    import ray.cloudpickle as pickle

    mended: list[str] = []
    for state_file in sorted(tune_dir.glob("experiment_state-*.json"))[-1:]:  # the one Tune restores
        try:
            trials = json.loads(state_file.read_text())["trial_data"]
        except (OSError, ValueError, KeyError):
            continue
        for _, run_state in trials:
            try:
                manager = json.loads(run_state)["checkpoint_manager"]
                if manager.get("_type") != "CLOUDPICKLE_FALLBACK":
                    continue
                latest = pickle.loads(bytes.fromhex(manager["value"])).latest_checkpoint_result
            except Exception:  # noqa: BLE001 - another Tune's format: nothing to mend here
                continue
            if latest is None or latest.checkpoint is None:
                continue
            named = Path(latest.checkpoint.path)
            if named.exists() or not named.parent.is_dir():
                continue
            # the oldest kept is the one Tune registered (a newer one may be a half-written report)
            kept = sorted(p for p in named.parent.glob("checkpoint_*") if p.is_dir())
            try:
                if kept:
                    shutil.copytree(kept[0], named)
                    mended.append(named.parent.name)
            except OSError:
                shutil.rmtree(named, ignore_errors=True)
    return mended


def drop_broken_tune_state(tune_dir: Path) -> list[str]:
    """Before `--resume`: the newest saved Tune session whose files a full disk cut short is
    dropped (its experiment state, generator and searcher state); returns those sessions.

    Tune writes these files in place, and on one it cannot read it silently starts a new
    experiment; with it gone, Tune restores the session before, or the driver resumes from the
    study's own records when none is left.
    """
    dropped: list[str] = []
    while True:
        states = sorted(tune_dir.glob("experiment_state-*.json"))
        if not states:
            return dropped
        session = states[-1].name.removeprefix("experiment_state-").removesuffix(".json")
        files = [tune_dir / f"{kind}-{session}.{ext}" for kind, ext in
                 (("experiment_state", "json"), ("search_gen_state", "json"), ("searcher-state", "pkl"))]
        if all(_whole(f) for f in files if f.exists()):
            return dropped
        for f in files:
            f.unlink(missing_ok=True)
        dropped.append(session)


def _whole(path: Path) -> bool:
    """A JSON document or a pickle (Tune names some pickles .json) that ends where its format
    says it ends."""
    import json
    import pickletools

    try:
        data = path.read_bytes()
        if data[:1] == b"\x80":  # pickle protocol 2 and later
            for _ in pickletools.genops(data):  # raises on a pickle cut short
                pass
        else:
            json.loads(data)
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return True


def set_aside_checkpoint(trial_dir: Path, epochs_done: int) -> int:
    """A trial Tune lost (started, never in its saved state) goes on from the newest checkpoint
    Tune stored for it whose epoch has its row: that folder becomes `ADOPTED_CHECKPOINT`, the
    other checkpoints and the working copy go. Returns its epoch, 0 when there is none.

    A newer checkpoint than the rows may be half written by a full disk, and going on from it
    would skip rows never recorded.
    """
    kept = 0
    folders = [(_checkpoint_epoch(f), f) for f in trial_dir.glob("checkpoint_*")
               if f.is_dir() and f.name.split("_")[1].isdigit()]
    for epoch, folder in sorted(folders, key=lambda pair: pair[0], reverse=True):
        if not kept and 0 < epoch <= epochs_done:
            shutil.rmtree(trial_dir / ADOPTED_CHECKPOINT, ignore_errors=True)
            folder.rename(trial_dir / ADOPTED_CHECKPOINT)
            kept = epoch
        else:
            shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(trial_dir / "work", ignore_errors=True)
    return kept


def _checkpoint_epoch(folder: Path) -> int:
    """The epoch a Tune checkpoint holds: as the trainable labelled it, else (a study from before
    those labels) by Tune's numbering, one checkpoint per epoch from 0 (0: unreadable)."""
    from ray import tune

    try:
        epoch = tune.Checkpoint.from_directory(str(folder)).get_metadata().get("epoch")
    except (OSError, ValueError):  # a label half written by a full disk
        return 0
    return int(epoch) if epoch is not None else int(folder.name.split("_")[1]) + 1


def accept_moved_modules() -> None:
    """Before Tune unpickles an interrupted study's state: the module paths of earlier layouts
    (`records.MOVED_MODULES`) resolve to where their classes live now, and so do the names the
    flat layout's `mtsearch.search` held (`records.FLAT_SEARCH_MODULES`)."""
    for old, new in MOVED_MODULES.items():
        sys.modules.setdefault(old, importlib.import_module(new))
    package = importlib.import_module("mtsearch.search")
    if "__getattr__" not in vars(package):
        def flat_name(name: str) -> Any:
            for module in FLAT_SEARCH_MODULES:
                found = getattr(importlib.import_module(module), name, None)
                if found is not None and not name.startswith("__"):
                    return found
            raise AttributeError(name)

        package.__getattr__ = flat_name  # type: ignore[attr-defined]
