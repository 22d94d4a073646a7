"""Dataset indexes on small trees in the official formats, quirks included, real video files."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtsearch.config import TrialConfig
from mtsearch.data.datasets import check_videos, index_for_config, load_index
from mtsearch.errors import InvalidInput

# Real HMDB-51 names carry these characters.
HMDB_VIDEOS = {
    "brush_hair": [
        ("April_09_brush_hair_u_nm_np1_ba_goo_0.avi", 1),
        ("Blonde_being_brushed_brush_hair_f_cm_np2_ri_med_0.avi", 2),
        ("Aussie_Brushing_Hair!_brush_hair_u_nm_np1_fr_goo_0.avi", 0),
    ],
    "clap": [
        ("#20_Rhythm_clap_u_nm_np1_fr_goo_0.avi", 1),
        ("Faith_Hill_-_Breathe_(Official_Music_Video)_clap_h_nm_np1_fr_goo_0.avi", 1),
        ("Tom_&_Jerry's_clap_f_cm_np1_ba_med_0.avi", 2),
    ],
    "wave": [
        ("Ma_Marie!_(Live)_wave_f_cm_np1_le_med_1.avi", 2),
        ("(Don't)_wave_u_cm_np1_fr_med_0.avi", 1),
    ],
}


def _write_split(path: Path, lines: list[str], newline: str = "\n", bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = newline.join(lines) + newline
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data.encode("utf-8"))


@pytest.fixture
def hmdb_root(tmp_path: Path, make_video) -> Path:
    """An HMDB-51 tree: trailing spaces, CRLF in one file, a BOM in another, blank lines, tag 0."""
    root = tmp_path / "hmdb51"
    for cls, videos in HMDB_VIDEOS.items():
        for name, _ in videos:
            make_video(root / cls / name, num_frames=4, size=(32, 32))
        for k in (1, 2, 3):
            lines = [f"{name} {tag} " for name, tag in videos]  # official: a space ends each line
            if cls == "clap":
                lines.insert(1, "")
            _write_split(root / "testTrainMulti_7030_splits" / f"{cls}_test_split{k}.txt", lines,
                         newline="\r\n" if cls == "wave" else "\n", bom=cls == "clap")
    return root


def test_hmdb_quirks_labels_and_tags(hmdb_root: Path) -> None:
    warnings: list[str] = []
    index = load_index("hmdb51", hmdb_root, 1, warn=warnings.append)
    assert index.classes == ["brush_hair", "clap", "wave"]  # sorted names -> ids
    assert warnings == [] and index.missing == []
    train = {(v.name, v.label) for v in index.train}
    test = {(v.name, v.label) for v in index.test}
    assert train == {
        ("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi", 0),
        ("clap/#20_Rhythm_clap_u_nm_np1_fr_goo_0.avi", 1),
        ("clap/Faith_Hill_-_Breathe_(Official_Music_Video)_clap_h_nm_np1_fr_goo_0.avi", 1),
        ("wave/(Don't)_wave_u_cm_np1_fr_med_0.avi", 2),
    }
    assert test == {
        ("brush_hair/Blonde_being_brushed_brush_hair_f_cm_np2_ri_med_0.avi", 0),
        ("clap/Tom_&_Jerry's_clap_f_cm_np1_ba_med_0.avi", 1),
        ("wave/Ma_Marie!_(Live)_wave_f_cm_np1_le_med_1.avi", 2),
    }
    assert all(v.path.is_file() for v in index.train + index.test)
    # tag 0 (unused) is in neither set
    assert not any("Aussie" in v.name for v in index.train + index.test)


def test_hmdb_class_ids_stable_across_splits_and_extra_files(hmdb_root: Path) -> None:
    (hmdb_root / "README.txt").write_text("not a class")
    (hmdb_root / "notes").mkdir()  # a folder without videos is not a class
    ids = [load_index("hmdb51", hmdb_root, k).classes for k in (1, 2, 3)]
    assert ids[0] == ids[1] == ids[2] == ["brush_hair", "clap", "wave"]


def test_hmdb_missing_video_is_skipped_with_a_named_warning(hmdb_root: Path) -> None:
    gone = "Tom_&_Jerry's_clap_f_cm_np1_ba_med_0.avi"
    (hmdb_root / "clap" / gone).unlink()
    warnings: list[str] = []
    index = load_index("hmdb51", hmdb_root, 2, warn=warnings.append)
    assert index.missing == [f"clap/{gone}"]
    assert len(warnings) == 1 and gone in warnings[0]
    assert len(index.test) == 2


@pytest.mark.parametrize("bad_line", ["just_one_token.avi", "video.avi 7", "video.avi train"])
def test_hmdb_malformed_line_names_file_and_line(hmdb_root: Path, bad_line: str) -> None:
    split = hmdb_root / "testTrainMulti_7030_splits" / "wave_test_split1.txt"
    _write_split(split, ["(Don't)_wave_u_cm_np1_fr_med_0.avi 1 ", "", bad_line])
    with pytest.raises(InvalidInput) as info:
        load_index("hmdb51", hmdb_root, 1)
    assert info.value.file == str(split)
    assert info.value.key == "line 3"


def _expect_layout_error(dataset: str, root: Path, missing: str) -> None:
    with pytest.raises(InvalidInput) as info:
        load_index(dataset, root, 1)
    text = info.value.render()
    assert missing in text and "expected layout" in text and "\n" not in text


def test_bad_layouts_name_the_missing_thing(tmp_path: Path, hmdb_root: Path, make_video) -> None:
    _expect_layout_error("hmdb51", tmp_path / "nowhere",
                         "nowhere: data.root: dataset folder not found")
    (tmp_path / "file").write_text("x")
    _expect_layout_error("hmdb51", tmp_path / "file", "not a folder")
    (tmp_path / "empty").mkdir()
    _expect_layout_error("ucf101", tmp_path / "empty", "empty folder")
    # a class folder with videos but no split file for the split asked
    make_video(hmdb_root / "run" / "run_0.avi", num_frames=2, size=(32, 32))
    _expect_layout_error("hmdb51", hmdb_root, "run_test_split1.txt")
    # the split folder itself
    other = tmp_path / "other"
    make_video(other / "run" / "run_0.avi", num_frames=2, size=(32, 32))
    _expect_layout_error("hmdb51", other,
                         "testTrainMulti_7030_splits: data.root: missing split folder")
    # a split file whose class folder is gone
    _write_split(other / "testTrainMulti_7030_splits" / "run_test_split1.txt", ["run_0.avi 1 "])
    _write_split(other / "testTrainMulti_7030_splits" / "jump_test_split1.txt", ["jump_0.avi 1 "])
    _expect_layout_error("hmdb51", other, "missing class folder for class 'jump'")
    # ucf101 without classInd.txt, list without test.txt
    (other / "ucfTrainTestlist").mkdir()
    _expect_layout_error("ucf101", other, "classInd.txt: data.root: missing file")
    _write_split(other / "train.txt", ["run/run_0.avi 0"])
    _expect_layout_error("list", other, "test.txt: data.root: missing file")


@pytest.fixture
def ucf_root(tmp_path: Path, make_video) -> Path:
    """UCF-101 with CRLF everywhere and the HandstandPushups / HandStandPushups mismatch."""
    root = tmp_path / "UCF-101"
    files = {
        "ApplyEyeMakeup": ["v_ApplyEyeMakeup_g01_c01.avi", "v_ApplyEyeMakeup_g08_c01.avi"],
        "HandstandPushups": ["v_HandStandPushups_g01_c01.avi", "v_HandStandPushups_g08_c01.avi",
                             "v_HandStandPushups_g09_c02.avi"],
        "YoYo": ["v_YoYo_g01_c01.avi", "v_YoYo_g08_c01.avi"],
    }
    for cls, names in files.items():
        for name in names:
            make_video(root / cls / name, num_frames=4, size=(32, 32))
    lists = root / "ucfTrainTestlist"
    classes = ["1 ApplyEyeMakeup", "2 HandstandPushups", "3 YoYo"]
    _write_split(lists / "classInd.txt", classes, "\r\n")
    for k in (1, 2, 3):
        _write_split(lists / f"trainlist0{k}.txt", [
            "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1",
            "HandstandPushups/v_HandStandPushups_g08_c01.avi 2",
            # a case slip in the list: the file on disk is v_HandStandPushups_g09_c02.avi
            "HandstandPushups/v_HandstandPushups_g09_c02.avi 2",
            "YoYo/v_YoYo_g08_c01.avi 3",
        ], "\r\n")
        _write_split(lists / f"testlist0{k}.txt", [
            "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
            "HandstandPushups/v_HandStandPushups_g01_c01.avi",
            "YoYo/v_YoYo_g01_c01.avi",
            "",
        ], "\r\n")
    return root


def test_ucf_quirks_and_classind_order(ucf_root: Path) -> None:
    warnings: list[str] = []
    index = load_index("ucf101", ucf_root, 1, warn=warnings.append)
    assert warnings == []
    assert index.classes == ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]
    assert [(v.name, v.label) for v in index.train] == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0),
        ("HandstandPushups/v_HandStandPushups_g08_c01.avi", 1),
        ("HandstandPushups/v_HandStandPushups_g09_c02.avi", 1),
        ("YoYo/v_YoYo_g08_c01.avi", 2),
    ]
    assert [v.label for v in index.test] == [0, 1, 2]
    assert all(v.path.is_file() for v in index.train + index.test)


def test_ucf_ids_follow_classind_not_names(ucf_root: Path) -> None:
    lists = ucf_root / "ucfTrainTestlist"
    classes = ["1 YoYo", "2 ApplyEyeMakeup", "3 HandstandPushups"]
    _write_split(lists / "classInd.txt", classes, "\r\n")
    index = load_index("ucf101", ucf_root, 2)
    assert index.classes == ["YoYo", "ApplyEyeMakeup", "HandstandPushups"]
    assert {v.name.split("/")[0]: v.label for v in index.test} == {
        "YoYo": 0, "ApplyEyeMakeup": 1, "HandstandPushups": 2}


def test_ucf_unknown_class_and_missing_file(ucf_root: Path) -> None:
    lists = ucf_root / "ucfTrainTestlist"
    _write_split(lists / "testlist01.txt", ["YoYo/v_YoYo_g01_c01.avi", "YoYo/v_YoYo_g77_c01.avi"])
    warnings: list[str] = []
    index = load_index("ucf101", ucf_root, 1, warn=warnings.append)
    assert index.missing == ["YoYo/v_YoYo_g77_c01.avi"] and "v_YoYo_g77_c01.avi" in warnings[0]
    _write_split(lists / "testlist01.txt", ["Juggling/v_Juggling_g01_c01.avi"])
    with pytest.raises(InvalidInput, match="line 1: class folder 'Juggling' is not in classInd"):
        load_index("ucf101", ucf_root, 1)


def test_list_layout(tmp_path: Path, make_video) -> None:
    root = tmp_path / "mine"
    for rel in ("a/one.avi", "b/two words.avi", "c/three.avi"):
        make_video(root / rel, num_frames=3, size=(32, 32))
    _write_split(root / "train.txt", ["a/one.avi 0", "b/two words.avi 2 "], "\r\n")
    _write_split(root / "test.txt", ["c/three.avi 1"])
    index = load_index("list", root, 1)
    assert index.classes == ["class_0", "class_1", "class_2"]
    assert [(v.name, v.label) for v in index.train] == [("a/one.avi", 0), ("b/two words.avi", 2)]
    (root / "classes.txt").write_text("walk\nrun\njump\n")
    assert load_index("list", root, 1).classes == ["walk", "run", "jump"]
    (root / "classes.txt").write_text("walk\nrun\n")
    with pytest.raises(InvalidInput, match="line 2: label 2 has no class"):
        load_index("list", root, 1)


def test_index_for_config_needs_a_root_for_real_datasets(hmdb_root: Path) -> None:
    cfg = TrialConfig.from_mapping({"data": {"dataset": "hmdb51"}})
    with pytest.raises(InvalidInput) as info:
        index_for_config(cfg)
    assert info.value.key == "data.root"
    data = {"dataset": "hmdb51", "root": str(hmdb_root), "split": 3}
    cfg = TrialConfig.from_mapping({"data": data})
    index = index_for_config(cfg)
    assert index.split == 3 and index.num_classes == 3


def test_check_videos_finds_damaged_and_short(tmp_path: Path, make_video) -> None:
    root = tmp_path / "mine"
    make_video(root / "good.avi", num_frames=40, size=(32, 32))
    make_video(root / "short.avi", num_frames=5, size=(32, 32))
    (root / "empty.avi").write_bytes(b"")
    (root / "garbage.avi").write_bytes(bytes(range(256)) * 40)
    whole = (root / "good.avi").read_bytes()
    (root / "truncated.avi").write_bytes(whole[: len(whole) // 2])
    _write_split(root / "train.txt", [f"{n}.avi 0" for n in ("good", "short", "empty", "garbage")])
    _write_split(root / "test.txt", ["truncated.avi 0"])
    index = load_index("list", root, 1)
    for decode in (False, True):
        checks = {c.item.name: c for c in check_videos(index.train + index.test, 13, decode=decode)}
        assert checks["good.avi"].usable and checks["good.avi"].frames == 40
        assert checks["short.avi"].usable and checks["short.avi"].frames == 5
        assert checks["short.avi"].decoded
        for bad in ("empty.avi", "garbage.avi", "truncated.avi"):
            assert not checks[bad].usable and checks[bad].error
    # at 15 fps the 40-frame video has 20 frames; 60 fps is above the source
    at15 = check_videos(index.train[:1], 13, fps=15)[0]
    assert at15.frames == 20
    at60 = check_videos(index.train[:1], 13, fps=60)[0]
    assert not at60.usable and "30 fps" in at60.error
