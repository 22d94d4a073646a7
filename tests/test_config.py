"""TrialConfig: defaults, nested/dotted loading, validation messages, presets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtsearch.config import TrialConfig, load_config
from mtsearch.errors import InvalidInput
from mtsearch.presets import PRESETS, branches_label, normalize_branches


def test_defaults_are_the_thesis():
    cfg = TrialConfig()
    assert cfg.model.preset == "thesis"
    assert cfg.crop == 240 and cfg.patch == 80 and cfg.short_side == 256
    assert (cfg.resolved().loss.w_track, cfg.loss.w_dir, cfg.loss.track_lambda) == (25.0, 2.0, 0.1)
    assert (cfg.lr, cfg.optim.betas, cfg.optim.weight_decay) == (2e-4, (0.5, 0.999), 1e-4)
    assert cfg.resolved().optim.lr == 2e-4
    assert (cfg.optim.batch_size, cfg.optim.epochs, cfg.optim.plateau_patience) == (4, 100, 10)
    assert (cfg.data.clip_frames, cfg.track.frame_gap, cfg.track.past_frames) == (13, 4, 3)
    assert cfg.model.branches == ("cls", "track", "dir")


def test_a_preset_carries_its_learning_rate_and_an_explicit_one_wins():
    assert TrialConfig.from_mapping({"model.preset": "tiny"}).resolved().optim.lr == 1e-3
    assert TrialConfig.from_mapping({"model.preset": "thesis"}).resolved().optim.lr == 2e-4
    explicit = TrialConfig.from_mapping({"model.preset": "tiny", "optim.lr": 3e-4}).resolved()
    assert explicit.optim.lr == 3e-4


def test_a_resumed_run_keeps_the_preset_values_it_recorded():
    from mtsearch.records import adopt_recorded

    """An older version resolved tiny's lr to 2e-4; a resume keeps it unless the key is set."""
    recorded = TrialConfig.from_mapping({"model.preset": "tiny", "optim.lr": 2e-4}).resolved()
    bare = TrialConfig.from_mapping({"model.preset": "tiny"})
    assert adopt_recorded(bare, recorded).resolved().optim.lr == 2e-4
    explicit = TrialConfig.from_mapping({"model.preset": "tiny", "optim.lr": 5e-3})
    assert adopt_recorded(explicit, recorded).resolved().optim.lr == 5e-3
    assert adopt_recorded(bare, recorded).crop == recorded.crop


def test_tracking_keys_default_by_preset_and_resolve():
    """issue 13: `tiny` takes the measured tracking defaults, the presets nobody measured keep the
    thesis's formula, an explicit key wins, and resolved() writes the values out."""
    from mtsearch.presets import MEASURED_TRACKING, thesis_tracking

    tiny = TrialConfig.from_mapping({"model.preset": "tiny"})
    assert tiny.tracking == MEASURED_TRACKING
    assert tiny.resolved().track.localizer == "softargmax" and tiny.resolved().loss.sim_weight == 0
    assert tiny.resolved().loss.w_track == 0.25
    thesis = TrialConfig().resolved()
    assert thesis.tracking == thesis_tracking("thesis")
    assert thesis.track.localizer == "conv" and thesis.loss.sim_weight == 1.0
    assert thesis.track.temperature == pytest.approx(512 ** -0.5)  # TimeCycle's
    explicit = TrialConfig.from_mapping({"model.preset": "tiny", "track.localizer": "conv",
                                         "track.temperature": 0.1})
    assert explicit.tracking["track.localizer"] == "conv"
    assert explicit.tracking["track.temperature"] == 0.1
    assert explicit.tracking["track.target_patch"] == "crop"


def test_a_record_from_before_the_tracking_keys_keeps_the_thesis_formula(tmp_path: Path):
    """A checkpoint or trials.parquet config (and a study's space.yaml) written before the tracking keys
    ran the thesis's tracking formula: resumed, it still does, and a space file that leaves the
    keys unset is not refused as changed."""
    from mtsearch.presets import thesis_tracking
    from mtsearch.records import adopt_recorded, config_from_record
    from mtsearch.space import load_study_space

    old = TrialConfig.from_mapping({"model.preset": "tiny"}).to_dict()
    for key in ("localizer", "target_patch", "center_features", "patch_select", "crop_grad",
                "temperature", "projection"):
        del old["track"][key]
    del old["loss"]["sim_weight"]
    old["loss"]["w_track"] = 25.0  # what a record of that time holds (the default then)
    recorded = config_from_record(old)
    assert recorded.resolved().tracking == thesis_tracking("tiny")
    bare = TrialConfig.from_mapping({"model.preset": "tiny"})
    assert adopt_recorded(bare, recorded).resolved().tracking == thesis_tracking("tiny")
    new = config_from_record(TrialConfig.from_mapping({"model.preset": "tiny"}).resolved().to_dict())
    assert new.tracking["track.localizer"] == "softargmax"  # a new record keeps what it ran

    study = tmp_path / "old"
    study.mkdir()
    from mtsearch.yamlio import dump_yaml

    (study / "space.yaml").write_text(dump_yaml({
        "name": "old", "base": old, "metric": "val_hit1", "mode": "max",
        "search": {"algorithm": "random", "num_samples": 2}, "space": {"loss.w_dir": {"uniform": [1, 2]}},
    }))
    saved = load_study_space(study)
    assert adopt_recorded(bare, saved.base).resolved().tracking == thesis_tracking("tiny")


def test_presets_keep_thesis_geometry():
    for name, preset in PRESETS.items():
        assert preset.crop % 8 == 0 and preset.patch % 8 == 0, name
        assert preset.patch * 3 == preset.crop, name


def test_nested_and_dotted_keys_mix():
    cfg = TrialConfig.from_mapping(
        {"model": {"preset": "tiny"}, "loss.w_track": 5, "optim": {"lr": "1e-3"}}, "c.yaml"
    )
    assert cfg.model.preset == "tiny" and cfg.crop == PRESETS["tiny"].crop
    assert cfg.loss.w_track == 5.0 and cfg.optim.lr == 1e-3


def test_key_given_twice_is_an_error():
    with pytest.raises(InvalidInput, match="given twice"):
        TrialConfig.from_mapping({"loss": {"w_dir": 1}, "loss.w_dir": 2}, "c.yaml")


@pytest.mark.parametrize(
    ("data", "key", "fragment"),
    [
        ({"loss.w_trak": 1}, "loss.w_trak", "did you mean 'loss.w_track'"),
        ({"optim": {"lrr": 1}}, "optim.lrr", "did you mean 'optim.lr'"),
        ({"data.fps": 0}, "data.fps", "must be > 0"),
        ({"data.fps": "fast"}, "data.fps", "expected a number"),
        ({"optim.batch_size": 2.5}, "optim.batch_size", "expected an integer"),
        ({"optim.epochs": True}, "optim.epochs", "expected an integer"),
        ({"model.branches": ["track", "dir"]}, "model.branches", "must include cls"),
        ({"model.branches": ["cls", "flow"]}, "model.branches", "unknown branch"),
        ({"model.preset": "huge"}, "model.preset", "must be one of"),
        ({"track.past_frames": 4}, "track.past_frames", "< data.clip_frames"),
        ({"data.crop": 100}, "data.crop", "multiple of 8"),
        ({"track.patch": 240}, "track.patch", "smaller than data.crop"),
        ({"data.split": 4}, "data.split", "1, 2 or 3"),
        ({"optim.betas": [0.5]}, "optim.betas", "two numbers"),
        ({"data": 3}, "data", "expected a mapping"),
        ({"track.localizer": "mlp"}, "track.localizer", "must be one of"),
        ({"track.target_patch": "pixels"}, "track.target_patch", "must be one of"),
        ({"track.patch_select": "random"}, "track.patch_select", "must be one of"),
        ({"track.cycle_loss": "l2"}, "track.cycle_loss", "must be one of"),
        ({"track.projection": "tanh"}, "track.projection", "must be one of"),
        ({"track.temperature": 0}, "track.temperature", "must be > 0"),
        ({"track.center_features": "yes"}, "track.center_features", "true or false"),
        ({"track.crop_grad": 1}, "track.crop_grad", "true or false"),
        ({"track.warmup_epochs": -1}, "track.warmup_epochs", ">= 0"),
        ({"loss.sim_weight": -1}, "loss.sim_weight", ">= 0"),
    ],
)
def test_invalid_values_name_the_key(data, key, fragment):
    with pytest.raises(InvalidInput) as info:
        TrialConfig.from_mapping(data, "c.yaml")
    assert info.value.key == key
    assert fragment in str(info.value)
    assert str(info.value).startswith("c.yaml: " + key + ": ")


def test_branches_forms():
    assert normalize_branches("cls+dir") == ("cls", "dir")
    assert normalize_branches(["dir", "cls", "track"]) == ("cls", "track", "dir")
    assert branches_label(["track", "cls"]) == "cls+track"


def test_resolved_round_trip(tmp_path: Path):
    cfg = TrialConfig.from_mapping({"model.preset": "tiny", "data.crop": 48}).resolved()
    assert cfg.data.crop == 48 and cfg.track.patch == 16 and cfg.data.short_side == 51
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


def test_yaml_errors(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss:\n  w_track: 1\n  w_track: 2\n")
    with pytest.raises(InvalidInput, match="duplicate key"):
        load_config(bad)
    bad.write_text("loss: [1, 2\n")
    with pytest.raises(InvalidInput, match="invalid YAML"):
        load_config(bad)
    bad.write_text("!!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(InvalidInput):
        load_config(bad)
    with pytest.raises(InvalidInput, match="file not found"):
        load_config(tmp_path / "missing.yaml")


def test_train_cli_rejects_bad_config_with_one_line(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  preset: tiny\nloss:\n  w_trak: 3\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mtsearch", "train", str(bad), "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0] == f"error: {bad}: loss.w_trak: unknown key; did you mean 'loss.w_track'?"
    assert not (tmp_path / "run").exists()


def test_compile_is_unset_true_or_false_and_on_by_default_for_thesis_on_a_gpu():
    from mtsearch.train import compile_wanted

    assert TrialConfig().compile is None
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    thesis = TrialConfig.from_mapping({"model.preset": "thesis"})
    tiny = TrialConfig.from_mapping({"model.preset": "tiny"})
    assert compile_wanted(thesis, cuda) and not compile_wanted(tiny, cuda)
    assert not compile_wanted(thesis, cpu)  # never on the CPU, even when asked
    assert compile_wanted(TrialConfig.from_mapping({"model.preset": "tiny", "compile": True}), cuda)
    assert not compile_wanted(TrialConfig.from_mapping({"compile": False}), cuda)
    with pytest.raises(InvalidInput, match="compile.*true or false"):
        TrialConfig.from_mapping({"compile": "yes"}, "space.yaml")
