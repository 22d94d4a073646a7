"""The metric table is the one home of a metric's facts: its direction, label, unit and whether a
study may select on it; the store, the space file and the displays read it."""

from __future__ import annotations

import math

import pytest

from mtsearch.errors import InvalidInput
from mtsearch.metrics import (
    EPOCH_COLUMNS,
    EPOCH_METRICS,
    EVALUATED,
    MAXIMISE,
    METRICS,
    MINIMISE,
    OBJECTIVES,
    TEST_METRICS,
    counterpart_on_test,
    direction,
    display_scale,
    label,
)
from mtsearch.results.store import TEST_COLUMNS
from mtsearch.space import space_from_mapping

SPACE = {"space": {"loss.w_track": {"uniform": [1, 2]}}}


def test_directions_order_values_as_their_mode_says() -> None:
    values = [0.3, -1.0, 2.5, 0.7]
    assert MAXIMISE.best(values) == 2.5 and MINIMISE.best(values) == -1.0
    assert sorted(values, key=MAXIMISE.rank_key) == [2.5, 0.7, 0.3, -1.0]
    assert sorted(values, key=MINIMISE.rank_key) == [-1.0, 0.3, 0.7, 2.5]
    assert MAXIMISE.better(1.0, 0.5) and not MAXIMISE.better(0.5, 0.5) and MINIMISE.better(0.5, 1.0)
    for d in (MAXIMISE, MINIMISE):  # any real score beats the worst
        assert all(d.better(v, d.worst) for v in values) and math.isinf(d.worst)
    assert direction("max") is MAXIMISE and direction("min") is MINIMISE
    assert (MAXIMISE.extreme, MINIMISE.extreme) == ("highest", "lowest")
    with pytest.raises(ValueError):
        direction("up")


@pytest.mark.parametrize("metric,mode", [
    ("val_hit1", "max"), ("val_hit5", "max"), ("dir_acc", "max"), ("track_gain", "max"),
    ("cycle_gain", "max"), ("clips_per_s", "max"),
    ("loss", "min"), ("loss_track", "min"), ("epoch_s", "min"), ("track_err_px", "min"),
    ("track_feat_cos", "min"), ("data_wait", "min"),
])
def test_a_study_without_a_mode_gets_the_metrics_direction(metric: str, mode: str) -> None:
    spec = space_from_mapping({**SPACE, "metric": metric}, "s.yaml", "search", default_name="s")
    assert spec.mode == mode
    spec = space_from_mapping({**SPACE, "metric": metric, "mode": "max"}, "s.yaml", "search", default_name="s")
    assert spec.mode == "max"  # an explicit mode wins


def test_only_objectives_may_be_selected_on() -> None:
    assert set(TEST_METRICS) <= set(EPOCH_METRICS) and not set(TEST_METRICS) & set(OBJECTIVES)
    for metric in TEST_METRICS:
        with pytest.raises(InvalidInput, match="never optimised"):
            space_from_mapping({**SPACE, "metric": metric}, "s.yaml", "search", default_name="s")
    with pytest.raises(InvalidInput, match="did you mean 'val_hit1'"):
        space_from_mapping({**SPACE, "metric": "vall_hit1"}, "s.yaml", "search", default_name="s")


def test_the_store_and_the_trainer_read_the_table() -> None:
    assert EPOCH_COLUMNS == ("epoch", *EPOCH_METRICS) and TEST_COLUMNS == TEST_METRICS
    assert set(EVALUATED) <= set(EPOCH_METRICS)
    assert {"val_hit1", "val_hit5", "dir_acc", "track_err_px"} <= set(EVALUATED)
    assert counterpart_on_test("val_hit5") == "test_hit5" and counterpart_on_test("val_hit1") == "test_hit1"


def test_every_metric_has_words_and_a_display() -> None:
    for name, metric in METRICS.items():
        assert metric.label and metric.label != name
    assert display_scale("val_hit1", [0.25, 0.5, None]) == (100.0, "%")
    assert display_scale("val_hit1", [0.25, 1.5]) == (1.0, "")  # not a fraction after all
    assert display_scale("track_err_px", [0.25, 0.5]) == (1.0, "")  # pixels are never percent
    assert label("val_hit1", "%") == "validation hit@1 (%)"
    assert label("epoch_s") == "epoch time (s)" and label("track_err_px") == "tracking error (px)"
    assert label("not_a_metric") == "not_a_metric"
