"""Fused trials (train/side_by_side.py): each slot reproduces its own unfused run, and owns its failures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from figures import TIMING, same_figure

from mtsearch.config import TrialConfig
from mtsearch.errors import InvalidInput
from mtsearch.metrics import TEST_METRICS
from mtsearch.train import fit
from mtsearch.train.checkpoint import CHECKPOINT_FILE
from mtsearch.train.fit import FitResult
from mtsearch.train.side_by_side import fit_side_by_side

# 16 training videos at batch 4: 4 steps an epoch, so 5 epochs are the contract's 20 steps
SLOTS = (
    {"loss.w_track": 0.25, "optim.lr": 1e-3, "seed": 5, "data.fps": 30},
    {"loss.w_track": 2.0, "optim.lr": 3e-4, "seed": 11, "data.fps": 15},
    {"loss.w_track": 0.05, "optim.lr": 2e-3, "seed": 2, "data.fps": 20},
)


def slot_config(root: Path, cache: Path, **overrides) -> TrialConfig:
    base = {
        "data.root": str(root), "data.cache_dir": str(cache), "data.crop": 48, "data.clip_frames": 7,
        "track.frame_gap": 2, "track.past_frames": 3, "model.preset": "tiny",
        "model.branches": ["cls", "track", "dir"], "optim.batch_size": 4, "optim.epochs": 5,
        "eval.every": 2, "device": "cpu", "threads": 1,
    }
    return TrialConfig.from_mapping({**base, **overrides})


def _rows(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


def _state(run_dir: Path) -> dict[str, torch.Tensor]:
    saved = torch.load(run_dir / "checkpoint" / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    return saved["model"]


def _assert_same_run(fused: FitResult, alone: FitResult, fused_dir: Path, alone_dir: Path) -> None:
    assert fused.status == alone.status and fused.epochs_done == alone.epochs_done
    for row_f, row_a in zip(_rows(fused.history), _rows(alone.history), strict=True):
        assert row_f.keys() == row_a.keys()
        for key, value in row_a.items():
            assert same_figure(row_f[key], value, rel=1e-4, abs=1e-7), (key, row_f[key], value)
    weights_f, weights_a = _state(fused_dir), _state(alone_dir)
    assert weights_f.keys() == weights_a.keys()
    for name, tensor in weights_a.items():  # weights, BatchNorm running statistics, counters
        other = weights_f[name]
        if tensor.is_floating_point():
            scale = float(tensor.double().norm()) or 1.0
            assert float((other.double() - tensor.double()).norm()) <= 1e-4 * scale, name
        else:
            assert torch.equal(other, tensor), name


def test_each_fused_slot_reproduces_its_unfused_run(small_set: Path, tmp_path: Path):
    """Three slots differing in w_track, lr, seed and fps; all branches; 20 steps each."""
    cache = tmp_path / "cache"
    cfgs = [slot_config(small_set, cache, **slot) for slot in SLOTS]
    fused = fit_side_by_side(cfgs, [tmp_path / f"fused{k}" for k in range(3)], cores=3)
    for k, cfg in enumerate(cfgs):
        alone = fit(cfg, tmp_path / f"alone{k}")
        result = fused[k]
        assert isinstance(result, FitResult), result
        assert result.status == "completed" and result.history[-1]["loss_track"] is not None
        _assert_same_run(result, alone, tmp_path / f"fused{k}", tmp_path / f"alone{k}")
    # the slots really differ: their own seeds, rates and data
    assert len({round(r.history[0]["loss"], 6) for r in fused}) == 3


def test_a_slot_that_diverges_or_stops_leaves_the_others_untouched(small_set: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    epochs = {"optim.epochs": 3, "eval.every": 1}
    cfgs = [slot_config(small_set, cache, **SLOTS[0], **epochs),
            slot_config(small_set, cache, **{**SLOTS[1], "loss.w_track": 1e39}, **epochs),  # -inf loss
            slot_config(small_set, cache, **SLOTS[2], **epochs)]
    seen: list[list[int]] = [[], [], []]

    def reporter(k: int):
        def on_epoch(metrics: dict, ckpt: Path | None) -> bool:
            seen[k].append(metrics["epoch"])
            return not (k == 2 and metrics["epoch"] == 1)  # slot 2 is stopped after epoch 1
        return on_epoch

    fused = fit_side_by_side(cfgs, [tmp_path / f"fused{k}" for k in range(3)],
                      on_epoch=[reporter(k) for k in range(3)], cores=3)
    assert fused[1].status == "diverged" and "non-finite loss" in fused[1].error
    assert fused[2].status == "stopped" and seen[2] == [1]
    assert fused[0].status == "completed" and seen[0] == [1, 2, 3]
    alone = fit(cfgs[0], tmp_path / "alone0")
    _assert_same_run(fused[0], alone, tmp_path / "fused0", tmp_path / "alone0")


def test_fused_slots_resume_each_from_its_own_checkpoint(small_set: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    dirs = [tmp_path / f"fused{k}" for k in range(2)]
    short = [slot_config(small_set, cache, **SLOTS[k], **{"optim.epochs": 1, "eval.every": 1}) for k in range(2)]
    full = [slot_config(small_set, cache, **SLOTS[k], **{"optim.epochs": 3, "eval.every": 1}) for k in range(2)]
    fit_side_by_side(short, dirs, cores=2)  # as if killed after the first epoch
    resumed = fit_side_by_side(full, dirs, cores=2)
    for k in range(2):
        alone = fit(full[k], tmp_path / f"alone{k}")
        result = resumed[k]
        assert isinstance(result, FitResult) and result.epochs_done == 3
        # the 1-epoch run met the test split after epoch 1; the straight run only after epoch 3
        rows_f, rows_a = _rows(result.history), _rows(alone.history)
        rows_f[0] = {**rows_f[0], **dict.fromkeys(TEST_METRICS)}
        result.history = rows_f
        alone.history = rows_a
        _assert_same_run(result, alone, dirs[k], tmp_path / f"alone{k}")


def test_slots_of_another_network_shape_are_refused(small_set: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    cfgs = [slot_config(small_set, cache), slot_config(small_set, cache, **{"data.crop": 64})]
    with pytest.raises(InvalidInput, match="data.crop"):
        fit_side_by_side(cfgs, [tmp_path / "a", tmp_path / "b"])


def test_a_slot_that_cannot_start_is_its_own_failure(small_set: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    good = slot_config(small_set, cache, **{"optim.epochs": 1})
    fit(slot_config(small_set, cache, **{"optim.epochs": 1, "loss.w_dir": 7}), tmp_path / "b")
    # slot 1's folder holds another config's checkpoint: that slot fails, slot 0 trains
    results = fit_side_by_side([good, good], [tmp_path / "a", tmp_path / "b"], cores=2)
    assert isinstance(results[0], FitResult) and results[0].status == "completed"
    assert isinstance(results[1], InvalidInput) and "loss.w_dir" in str(results[1])


def test_the_warmup_lock_of_gpu_slots_changes_nothing_computed(small_set: Path, tmp_path: Path):
    """Fused slots on a GPU hold a shared lock through their compiling epochs; the same path on
    the CPU (which CI has) trains the same run."""
    import threading

    from mtsearch.train.fit import prepare_run, train_epochs

    cfg = slot_config(small_set, tmp_path / "cache", **SLOTS[1], **{"optim.epochs": 3})
    run = prepare_run(cfg, tmp_path / "locked", resume=True, say=print, warn=print)
    lock = threading.Lock()
    locked = train_epochs(run, on_epoch=None, on_batch=None, say=print, warmup=lock)
    assert not lock.locked()
    alone = fit(cfg, tmp_path / "alone")
    _assert_same_run(locked, alone, tmp_path / "locked", tmp_path / "alone")


def test_an_interrupt_in_a_slots_report_stops_every_slot_and_goes_up(small_set: Path, tmp_path: Path):
    """A callback that raises KeyboardInterrupt (Ctrl-C) is the caller's: every slot stops at the end
    of its epoch and the interrupt is raised once all have ended, never a slot left waiting."""
    cache = tmp_path / "cache"
    cfgs = [slot_config(small_set, cache, **SLOTS[k], **{"optim.epochs": 3}) for k in range(2)]

    def interrupt(metrics: dict, ckpt: Path | None) -> bool:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_side_by_side(cfgs, [tmp_path / "a", tmp_path / "b"], on_epoch=[interrupt, None], cores=2)


def test_a_seeds_report_that_raises_stops_every_seed_and_goes_up(small_set: Path, tmp_path: Path):
    """`fit_seeds` reports from the caller's thread (a search's `tune.report`): when that raises,
    each seed stops instead of waiting for a report that never comes, and the error goes up."""
    import threading

    from mtsearch.train.side_by_side import fit_seeds

    cfg = slot_config(small_set, tmp_path / "cache", **SLOTS[0], **{"optim.epochs": 3})
    before = {t.name for t in threading.enumerate()}

    def failing_report(row: dict, ckpt: Path | None) -> bool:
        raise OSError("the disk that holds the reports is gone")

    with pytest.raises(OSError, match="disk"):
        fit_seeds(cfg, tmp_path / "run", seeds=2, on_epoch=failing_report)
    import time

    deadline = time.time() + 30  # a slot thread frees its memory after handing over its end
    while time.time() < deadline:
        left = [t for t in threading.enumerate() if t.name.startswith("slot-") and t.name not in before]
        if not left:
            break
        time.sleep(0.1)
    assert not left, [t.name for t in left]  # none waits for a report that never comes
