"""The trainer on real (small) synthetic videos: metrics, checkpoints, resume, divergence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from figures import TIMING, same_figure

from mtsearch.config import TrialConfig
from mtsearch.errors import InvalidInput
from mtsearch.metrics import EPOCH_COLUMNS, best_epoch
from mtsearch.train import fit, hit_at_k


def small_config(root: Path, cache: Path, **overrides) -> TrialConfig:
    base = {
        "data.root": str(root),
        "data.cache_dir": str(cache),
        "data.crop": 48,
        "data.clip_frames": 7,
        "track.frame_gap": 2,
        "track.past_frames": 3,
        "model.preset": "tiny",
        "optim.batch_size": 4,
        "optim.epochs": 2,
        "optim.lr": 1e-3,
        "eval.every": 1,
        "device": "cpu",
        "seed": 5,
    }
    base.update(overrides)
    return TrialConfig.from_mapping(base)


def _without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


def test_hit_at_k_on_hand_made_scores():
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    labels = torch.tensor([1, 1, 0, 2])
    assert hit_at_k(scores, labels, 1) == pytest.approx(0.25)
    assert hit_at_k(scores, labels, 2) == pytest.approx(0.5)
    assert hit_at_k(scores, labels, 5) == pytest.approx(1.0)  # k capped at the class count


def test_best_epoch_prefers_earlier_on_ties():
    history = [{"epoch": 1, "val_hit1": None}, {"epoch": 2, "val_hit1": 0.5},
               {"epoch": 3, "val_hit1": 0.5}, {"epoch": 4, "val_hit1": 0.25}]
    assert best_epoch(history)["epoch"] == 2
    assert best_epoch([{"epoch": 1, "val_hit1": None}]) is None


def test_fit_reports_every_epoch_column(small_set: Path, tmp_path: Path):
    cfg = small_config(small_set, tmp_path / "cache", **{"eval.every": 2, "optim.epochs": 3})
    seen: list[dict] = []
    ckpts: list[Path | None] = []
    result = fit(cfg, tmp_path / "run", on_epoch=lambda m, c: (seen.append(m), ckpts.append(c)) and None)
    assert result.status == "completed" and result.epochs_done == 3
    assert [m["epoch"] for m in seen] == [1, 2, 3]
    for m in seen:
        assert tuple(m) == (*EPOCH_COLUMNS, "peak_mem_gib", "device")
        assert m["device"] == "cpu" and 0.05 < m["peak_mem_gib"] < 64  # peak RSS on the CPU
        assert m["loss_track"] is not None and m["loss_dir"] is not None
        assert 0.0 <= m["train_hit1"] <= 1.0 and m["clips_per_s"] > 0
        assert 0.0 <= m["data_wait"] <= 1.0
    # evaluated on epoch 2 (every 2) and on the last epoch, not on epoch 1
    assert seen[0]["val_hit1"] is None and seen[1]["val_hit1"] is not None
    assert seen[2]["val_hit1"] is not None and seen[2]["dir_acc"] is not None
    assert all(c is not None and (c / "state.pt").exists() for c in ckpts)
    assert result.best_epoch in (2, 3)


def test_disabled_branches_report_no_loss(small_set: Path, tmp_path: Path):
    cfg = small_config(small_set, tmp_path / "cache", **{"model.branches": ["cls"], "optim.epochs": 1})
    result = fit(cfg)
    row = result.history[0]
    assert row["loss_track"] is None and row["loss_dir"] is None and row["dir_acc"] is None
    assert row["track_feat_cos"] is None  # no tracking branch, no collapse diagnostic
    assert row["track_gain"] is None and row["track_err_px"] is None and row["cycle_gain"] is None
    assert row["loss"] == pytest.approx(row["loss_cls"])


def test_resume_reproduces_an_uninterrupted_run(small_set: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    straight = fit(small_config(small_set, cache, **{"optim.epochs": 3}), tmp_path / "a")
    first = fit(small_config(small_set, cache, **{"optim.epochs": 1}), tmp_path / "b")
    assert first.epochs_done == 1
    resumed = fit(small_config(small_set, cache, **{"optim.epochs": 3}), tmp_path / "b")
    assert resumed.epochs_done == 3
    a, b = _without_timing(straight.history), _without_timing(resumed.history)
    # the 1-epoch run met the test split at its end (epoch 1); the straight run only at epoch 3
    assert b[0]["test_hit1"] is not None and a[0]["test_hit1"] is None
    assert a[-1]["test_hit1"] is not None
    for row_a, row_b in zip(a, b, strict=True):
        assert row_a.keys() == row_b.keys()
        for key in (k for k in row_a if not (k.startswith("test_") and row_a is not a[-1])):
            assert same_figure(row_a[key], row_b[key], rel=1e-5, abs=1e-6), (key, row_a[key], row_b[key])


def test_resume_refuses_a_changed_config(small_set: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    fit(small_config(small_set, cache, **{"optim.epochs": 1}), tmp_path / "run")
    with pytest.raises(InvalidInput, match="loss.w_dir"):
        fit(small_config(small_set, cache, **{"loss.w_dir": 7}), tmp_path / "run")


def test_on_epoch_false_stops_the_run(small_set: Path, tmp_path: Path):
    cfg = small_config(small_set, tmp_path / "cache", **{"optim.epochs": 3})
    result = fit(cfg, on_epoch=lambda m, c: False)
    assert result.status == "stopped" and result.epochs_done == 1


def test_non_finite_loss_is_diverged(small_set: Path, tmp_path: Path):
    # l_track is negative (l_sim); a float32-overflowing weight turns the loss into -inf
    cfg = small_config(small_set, tmp_path / "cache", **{"loss.w_track": 1e39, "optim.epochs": 2})
    result = fit(cfg)
    assert result.status == "diverged"
    assert "non-finite loss" in result.error and result.epochs_done == 0


def test_train_cli_writes_metrics_and_resumes(small_set: Path, tmp_path: Path):
    import pyarrow.parquet as pq

    cfg = small_config(small_set, tmp_path / "cache", **{"optim.epochs": 1})
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "mtsearch", "train", str(path), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert pq.read_table(out / "metrics.parquet").column("epoch").to_pylist() == [1]
    proc = subprocess.run(cmd + ["--epochs", "2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "resuming from epoch 1" in proc.stdout
    table = pq.read_table(out / "metrics.parquet")
    assert table.column("epoch").to_pylist() == [1, 2]
    assert set(EPOCH_COLUMNS) <= set(table.column_names)


@pytest.mark.slow
def test_tiny_learns_the_synthetic_set_well_above_chance(builtin_cache: Path):
    """The CPU-sized preset on the built-in set (in the session's cache): from motion alone."""
    cfg = TrialConfig.from_mapping({
        "data.cache_dir": str(builtin_cache),
        "model.preset": "tiny",
        "model.branches": ["cls"],
        "optim.lr": 1e-3,
        "optim.epochs": 8,
        "eval.every": 2,
        "device": "cpu",
    })
    result = fit(cfg)
    chance = 1 / 6
    assert result.status == "completed"
    assert result.best_val_hit1 >= 2 * chance, result.history


@pytest.mark.slow
def test_a_bare_tiny_config_learns_within_six_epochs(builtin_cache: Path):
    """`model.preset: tiny` alone (its own learning rate, every branch) learns the built-in set
    within 6 epochs, as `mtsearch train` runs it, on the test split with every training video (the
    thesis's protocol). The bound is twice chance (1/3 against 1/6; with 72 test videos, 3.8
    standard deviations above chance), not one machine's figure: seeds 0 to 3 gave 0.51, 0.60,
    0.54 and 0.53 on the machine this was written on, and seed 0 gave 0.47 on another 2-core CPU."""
    cfg = TrialConfig.from_mapping({
        "data.cache_dir": str(builtin_cache),
        "model.preset": "tiny",
        "optim.epochs": 6,
        "eval.every": 6,  # the measured figures above are epoch 6's; one evaluation saves CI time
        "device": "cpu",
        "data.selection": "test",
        "data.val_fraction": 0,
    })
    result = fit(cfg)
    assert result.status == "completed"
    assert result.best_val_hit1 >= 2 / 6, [(h["epoch"], h["val_hit1"]) for h in result.history]


@pytest.mark.slow
def test_killed_train_resumes_from_its_last_epoch(small_set: Path, tmp_path: Path):
    import signal
    import time

    import pyarrow.parquet as pq

    cfg = small_config(small_set, tmp_path / "cache", **{"optim.epochs": 4})
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "mtsearch", "train", str(path), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = out / "metrics.parquet"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and pq.read_table(metrics).num_rows >= 1:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = pq.read_table(metrics).column("epoch").to_pylist()
    assert 1 <= len(done) < 4

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    # the checkpoint may be one epoch ahead of metrics.parquet if the kill fell between the two
    resumed = int(again.stdout.split("resuming from epoch ")[1].split()[0])
    assert done[-1] <= resumed < 4
    assert pq.read_table(metrics).column("epoch").to_pylist() == [1, 2, 3, 4]


# ---- issue 8: no per-step sync, eval batch, old checkpoints ---------------------------------------


def _tiny_step(cfg: TrialConfig):
    from mtsearch.model import MultiBranchNet
    from mtsearch.train import TrainStep, make_optimizer

    torch.manual_seed(0)
    model = MultiBranchNet(cfg, num_classes=4)
    step = TrainStep(model, make_optimizer(model, cfg, torch.device("cpu")), cfg,
                     torch.device("cpu"), cuda_graph=False, warn=print)
    return model, step


@pytest.mark.parametrize("bad_step", [3, 27])
def test_nan_at_step_k_ends_the_epoch_as_diverged_naming_the_batch(bad_step: int, tmp_path: Path):
    """The loss is read back every SYNC_EVERY steps, yet the error names the very batch."""
    from mtsearch.train import SYNC_EVERY, Diverged
    from mtsearch.train.step import train_epoch

    cfg = small_config(tmp_path, tmp_path, **{"data.clip_frames": 7}).resolved()
    model, step = _tiny_step(cfg)
    calls = {"n": 0}

    def poison(module, args, out):  # the k-th forward pass returns NaN logits
        calls["n"] += 1
        return out * float("nan") if calls["n"] == bad_step else out

    model.cls_head.register_forward_hook(poison)
    gen = torch.Generator().manual_seed(0)
    batches = [
        (torch.randint(0, 256, (2, 7, 48, 48, 3), dtype=torch.uint8, generator=gen),
         torch.tensor([0, 1]))
        for _ in range(SYNC_EVERY + 10)
    ]
    seen: list[int] = []
    with pytest.raises(Diverged, match=f"batch {bad_step}$"):
        train_epoch(step, model, batches, cfg, 1, lambda done, *rest: seen.append(done))
    assert seen == ([] if bad_step <= SYNC_EVERY else [SYNC_EVERY])  # stopped at the next read
    assert calls["n"] <= ((bad_step - 1) // SYNC_EVERY + 1) * SYNC_EVERY


def test_evaluation_is_the_same_at_eval_batch_1_and_16(small_set: Path, tmp_path: Path):
    from mtsearch.data.cache import FrameCache
    from mtsearch.data.clips import TestClips, make_loader
    from mtsearch.data.datasets import index_for_config
    from mtsearch.train import evaluate

    cfg = small_config(small_set, tmp_path / "cache").resolved()
    fit(cfg.with_overrides({"optim.epochs": 1}), tmp_path / "run")  # fills the cache
    index = index_for_config(cfg)
    test_set = TestClips(index.test, FrameCache(tmp_path / "cache" / "frames"), cfg.data.fps,
                         cfg.short_side, cfg.data.clip_frames, cfg.crop)
    model, _ = _tiny_step(cfg)
    model.train()
    with torch.no_grad():  # running statistics that are not the identity
        for _ in range(3):
            model(torch.randn(4, 3, 7, 48, 48) * 2 + 1, track=False,
                  generator=torch.Generator().manual_seed(0))
    results = [
        evaluate(model, make_loader(test_set, batch, False, 0, "cpu", 0), cfg, torch.device("cpu"))
        for batch in (1, 16, 5)
    ]
    assert results[0]["dir_acc"] is not None
    # The collapse diagnostic and the tracking figures (issue 13) are float means over clips, and a
    # batch of 1, 5 or 16 runs other kernels: equal up to float32 rounding (6e-8 a value) of sums
    # over a few hundred terms, measured <= 4.9e-6. cycle_gain chains the tracker's 2k steps, each a
    # sharp soft-argmax that multiplies a position's rounding (10^4-10^5, see the tracker's
    # crop_grad): measured <= 1.3e-4 (6 weight seeds, 1 and 2 threads).
    for key, rel in (("track_feat_cos", 1e-4), ("track_err_px", 1e-4), ("track_gain", 1e-4),
                     ("cycle_gain", 1e-2)):
        values = [r.pop(key) for r in results]
        assert values[0] is not None, key  # the built-in set has ground truth
        assert values[1] == pytest.approx(values[0], rel=rel) and values[2] == pytest.approx(values[0], rel=rel)
    # Hit@k and dir_acc count argmax wins, which rounding changes only where two scores tie within
    # ~1e-7: exactly equal
    assert results[0] == results[1] == results[2]


def test_a_checkpoint_of_the_3d_trunk_layout_resumes(small_set: Path, tmp_path: Path):
    """A state.pt as the code before the fast path wrote it: 5-D trunk weights and Adam moments."""
    import legacy_model

    from mtsearch.presets import thesis_tracking
    from mtsearch.train.checkpoint import save_checkpoint

    cache = tmp_path / "cache"
    # the landed code computed the thesis's tracking formula (conv localizer); its record says so
    cfg = small_config(small_set, cache, **{"optim.epochs": 2, **thesis_tracking("tiny")}).resolved()
    torch.manual_seed(0)
    old = legacy_model.MultiBranchNet(cfg, num_classes=4)
    optimizer = torch.optim.Adam(old.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas)
    clips = torch.randn(2, 3, 7, 48, 48)
    out = old(clips, generator=torch.Generator().manual_seed(0))
    legacy_model.compute_losses(out, torch.tensor([0, 1]), cfg)["loss"].backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    history = [{**dict.fromkeys(EPOCH_COLUMNS), "epoch": 1, "loss": 1.0, "val_hit1": 0.25}]
    ckpt = tmp_path / "run" / "checkpoint"
    save_checkpoint(ckpt, cfg, 1, old, optimizer, scheduler, history)
    state = torch.load(ckpt / "state.pt", weights_only=False)
    del state["record_version"], state["config"]["record_version"]  # as the landed code wrote it
    torch.save(state, ckpt / "state.pt")
    assert state["model"]["trunk.conv1.0.weight"].dim() == 5

    # resumed from a config that leaves the tracking keys unset: the recorded formula is kept
    result = fit(small_config(small_set, cache, **{"optim.epochs": 2}), tmp_path / "run")
    assert result.status == "completed"
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert result.history[1]["loss"] is not None and result.history[1]["val_hit1"] is not None


def test_a_run_started_under_an_older_default_resumes_with_it(small_set: Path, tmp_path: Path):
    """The landed code resolved tiny's lr to 2e-4; a bare config resumed now keeps that rate."""
    cfg = small_config(small_set, tmp_path / "cache", **{"optim.epochs": 1})
    flat = {k: v for k, v in cfg.to_flat().items() if k != "optim.lr"}  # no lr: the preset's
    first = fit(TrialConfig.from_mapping({**flat, "optim.lr": 2e-4}), tmp_path / "run")
    assert first.history[0]["lr"] == pytest.approx(2e-4)
    resumed = fit(TrialConfig.from_mapping({**flat, "optim.epochs": 2}), tmp_path / "run")
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.history[1]["lr"] == pytest.approx(2e-4)


@pytest.mark.parametrize(
    ("overrides", "device", "expected"),
    [
        ({"threads": 4}, "cuda", 3),  # a search pins threads to cpus_per_trial: 3 workers + main
        ({"threads": 1}, "cuda", 0),  # one reserved CPU: the main process loads the data
        ({"threads": 32}, "cuda", 8),  # never more than MAX_WORKERS
        ({"threads": 4}, "cpu", 0),  # on the CPU the step is the bottleneck, not the loader
        ({"threads": 4, "data.workers": 6}, "cuda", 6),  # an explicit setting wins
    ],
)
def test_loader_workers_follow_the_trials_cpus(overrides: dict, device: str, expected: int):
    from mtsearch.train import loader_workers

    cfg = TrialConfig.from_mapping(overrides).resolved()
    assert loader_workers(cfg, torch.device(device)) == expected


def test_a_search_trial_gets_threads_from_cpus_per_trial():
    from mtsearch.space import space_from_mapping

    spec = space_from_mapping({"resources": {"cpus_per_trial": 3},
                               "space": {"loss.w_dir": {"uniform": [0, 1]}}}, "s.yaml", "search")
    assert spec.trial_config({"loss.w_dir": 0.5}).threads == 3


def test_selection_on_validation_meets_the_test_split_once(small_set: Path, tmp_path: Path):
    """issue 12: evaluations during training run on validation videos carved from training; the
    final weights meet the test split once, on the last epoch's row only."""
    from mtsearch.train import load_clips

    cfg = small_config(small_set, tmp_path / "cache", **{"optim.epochs": 2}).resolved()
    train, val, test, _ = load_clips(cfg, print)
    legacy = small_config(small_set, tmp_path / "cache", **{"data.selection": "test",
                                                             "data.val_fraction": 0}).resolved()
    full_train, no_val, same_test, _ = load_clips(legacy, print)
    assert len(val.items) > 0 and len(no_val.items) == 0 and len(test.items) == len(same_test.items)
    assert len(train.items) + len(val.items) == len(full_train.items)
    result = fit(cfg)
    first, last = result.history
    assert first["test_hit1"] is None and first["val_hit1"] is not None
    assert last["test_hit1"] is not None and result.test_hit1 == last["test_hit1"]
    assert all(-1.0 <= row["track_feat_cos"] <= 1.0 for row in result.history)  # issue 13's diagnostic
    assert all(row["track_gain"] > 0 and row["track_err_px"] >= 0 and row["cycle_gain"] > 0
               for row in result.history)  # issue 13's tracking figures, on validation clips
    # selection: test is the thesis's protocol: every evaluation is on the test split
    old = fit(legacy)
    assert old.history[-1]["test_hit1"] == old.history[-1]["val_hit1"]
    assert old.history[0]["test_hit1"] is None


def test_a_checkpoint_from_before_validation_splits_resumes_on_the_test_protocol(small_set: Path,
                                                                                   tmp_path: Path):
    """A run recorded without data.selection selected on the test split: resuming keeps that."""
    cfg = small_config(small_set, tmp_path / "cache", **{"optim.epochs": 1})
    fit(cfg, tmp_path / "run")
    state_path = tmp_path / "run" / "checkpoint" / "state.pt"
    state = torch.load(state_path, weights_only=False)
    del state["config"]["data"]["selection"], state["config"]["data"]["val_fraction"]
    del state["record_version"], state["config"]["record_version"]  # as that version wrote it
    torch.save(state, state_path)
    resumed = fit(small_config(small_set, tmp_path / "cache", **{"optim.epochs": 2}), tmp_path / "run")
    assert resumed.epochs_done == 2
    assert resumed.history[-1]["test_hit1"] == resumed.history[-1]["val_hit1"]  # evaluated on test
