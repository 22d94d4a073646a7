"""The result card of `mtsearch export` (issue 11): its diff and its data fingerprint."""

from __future__ import annotations

from pathlib import Path

from mtsearch.config import TrialConfig
from mtsearch.data.synthetic import write_synthetic
from mtsearch.results.card import config_diff, data_fingerprint


def test_the_diff_shows_only_what_departs_from_the_thesis():
    cfg = TrialConfig.from_mapping({"model.preset": "tiny", "loss.w_track": 40})
    diff = {key: (mine, thesis) for key, mine, thesis in config_diff(cfg)}
    assert diff["model.preset"] == ("tiny", "thesis")
    assert diff["loss.w_track"] == (40.0, 25.0)
    assert diff["data.crop"] == (96, 240) and diff["optim.lr"] == (1e-3, 2e-4)  # the preset's
    assert "loss.w_dir" not in diff and "optim.batch_size" not in diff
    assert config_diff(TrialConfig()) == []


def test_the_fingerprint_changes_when_a_video_changes(tmp_path: Path):
    root = write_synthetic(tmp_path / "set", classes=2, videos_per_class=3, seed=0)
    cfg = TrialConfig.from_mapping({"data.dataset": "synthetic", "data.root": str(root)})
    before = data_fingerprint(cfg)
    assert before["dataset"] == "synthetic" and before["classes"] == 2
    assert before["train videos"] + before["test videos"] == 6
    assert data_fingerprint(cfg) == before  # a pure function of the files
    video = next(p for p in sorted(root.rglob("*")) if p.suffix in (".avi", ".mp4"))
    with video.open("ab") as handle:
        handle.write(b"\0")
    after = data_fingerprint(cfg)
    assert after["index sha256"] != before["index sha256"]
