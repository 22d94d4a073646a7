"""`eval.every: rungs` (issue 34): a search evaluates the validation split where its scheduler
reads the metric (ASHA's rungs, a population's boundaries) and at the last epoch; old studies
resume with what they recorded."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest

from mtsearch.config import TrialConfig
from mtsearch.errors import InvalidInput
from mtsearch.files import write_atomic
from mtsearch.milestones import asha_rungs
from mtsearch.space import space_from_mapping


def test_asha_rungs_are_ray_tunes_own():
    from ray.tune.schedulers import ASHAScheduler

    for grace, factor, max_t in itertools.product([1, 2, 3, 4, 5], [2, 2.5, 3, 4], [4, 8, 10, 12, 30, 100]):
        if grace > max_t:
            continue
        asha = ASHAScheduler(time_attr="epoch", metric="m", mode="max", max_t=max_t, grace_period=grace,
                             reduction_factor=factor)
        ray_rungs = sorted({math.ceil(milestone) for milestone, _ in asha._brackets[0]._rungs})
        assert asha_rungs(grace, factor, max_t) == ray_rungs, (grace, factor, max_t)


def _search(scheduler: dict[str, Any], base: dict[str, Any] | None = None, kind: str = "search") -> Any:
    data: dict[str, Any] = {"name": "s", "base": {"optim.epochs": 100, **(base or {})}, "scheduler": scheduler}
    if kind == "search":
        data["space"] = {"loss.w_track": {"loguniform": [0.1, 50]}}
    else:
        data["grid"] = {"loss.w_track": [1.0, 2.0]}
    return space_from_mapping(data, "s.yaml", kind)


@pytest.mark.parametrize("scheduler, base, every, at", [
    ({"type": "asha", "grace_period": 4, "reduction_factor": 3}, {}, "rungs", (4, 12, 36)),  # the thesis job
    ({"type": "asha", "grace_period": 4, "reduction_factor": 3}, {"eval.every": 2}, 2, None),  # said: kept
    ({"type": "none"}, {}, 2, None),  # nothing decides early: a number, as before
    ({"type": "pbt", "perturbation_interval": 10}, {"eval.every": "rungs"}, "rungs",
     tuple(range(10, 100, 10))),
    ({"type": "none"}, {"eval.every": "rungs"}, "rungs", ()),  # the last epoch alone
])
def test_a_search_with_a_scheduler_evaluates_at_its_milestones(scheduler: dict[str, Any], base: dict[str, Any],
                                                              every: Any, at: Any):
    spec = _search(scheduler, base)
    assert (spec.base.eval.every, spec.base.eval.at) == (every, at)
    trial = spec.trial_config({"loss.w_track": 1.0})
    assert (trial.eval.every, trial.eval.at) == (every, at)  # what the trainer and the export see


def test_a_grid_keeps_a_number_and_a_pbt_default_evaluates_at_its_boundaries():
    assert _search({"type": "none"}, kind="ablation").base.eval.every == 2
    spec = _search({"type": "pbt", "perturbation_interval": 25})
    assert (spec.base.eval.every, spec.base.eval.at) == ("rungs", (25, 50, 75))


def test_the_epochs_a_config_evaluates():
    cfg = TrialConfig.from_mapping({"optim.epochs": 8, "eval.every": "rungs", "eval.at": [4, 2]})
    assert [e for e in range(1, 9) if cfg.evaluates(e)] == [2, 4, 8]
    assert cfg.to_dict()["eval"]["at"] == [2, 4]
    assert TrialConfig.from_mapping(cfg.to_dict()) == cfg  # an exported config trains the same
    assert [e for e in range(1, 9) if TrialConfig.from_mapping({"optim.epochs": 8, "eval.every": 3}).evaluates(e)] \
        == [3, 6, 8]
    alone = TrialConfig.from_mapping({"optim.epochs": 8, "eval.every": "rungs"})
    assert [e for e in range(1, 9) if alone.evaluates(e)] == [8]


@pytest.mark.parametrize("mapping, key, needle", [
    ({"eval.every": "sometimes"}, "eval.every", "rungs"),
    ({"eval.every": 0}, "eval.every", ">= 1"),
    ({"eval.at": [2]}, "eval.at", "goes with eval.every: rungs"),
    ({"eval.every": "rungs", "eval.at": [0, 2]}, "eval.at", "epochs count from 1"),
    ({"eval.every": "rungs", "eval.at": 4}, "eval.at", "a list of epochs"),
])
def test_a_bad_evaluation_key_is_named(mapping: dict[str, Any], key: str, needle: str):
    with pytest.raises(InvalidInput) as caught:
        TrialConfig.from_mapping(mapping, "run.yaml")
    assert caught.value.key == key and needle in caught.value.what


def test_a_study_recorded_before_rungs_resumes_evaluating_as_it_did(tmp_path: Path):
    from mtsearch.search.study import SPACE_FILE, open_study, release

    asha = {"type": "asha", "grace_period": 4, "reduction_factor": 3}
    before = _search(asha, {"eval.every": 2})  # what the study recorded (the default then)
    study_dir = tmp_path / "trials" / "s"
    study_dir.mkdir(parents=True)
    write_atomic(study_dir / SPACE_FILE, before.to_yaml())
    spec, _, fd, _, _ = open_study(_search(asha), tmp_path / "trials", resume=True)  # the same file today
    release(fd)
    assert (spec.base.eval.every, spec.base.eval.at) == (2, None)


def test_training_evaluates_only_the_epochs_it_is_told(tmp_path: Path, small_set: Path, one_torch_thread: None,
                                                     monkeypatch: pytest.MonkeyPatch):
    from mtsearch.train import fit

    monkeypatch.setenv("MTSEARCH_CACHE", str(tmp_path / "cache"))
    cfg = TrialConfig.from_mapping({
        "data.root": str(small_set), "data.crop": 48, "data.clip_frames": 7, "track.frame_gap": 2,
        "model.preset": "tiny", "model.branches": ["cls"], "optim.epochs": 3, "device": "cpu",
        "eval.every": "rungs", "eval.at": [1]})
    history = fit(cfg, tmp_path / "run").history
    assert [r["val_hit1"] is not None for r in history] == [True, False, True]
    assert [r["eval_clips"] > 0 for r in history] == [True, False, True]
