"""What a dataset index is (videos with labels, in a train and a test list) and the folder
layouts it is read from: the types every layout's reader shares (`datasets.py`,
`annotated_layouts.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mtsearch.errors import InvalidInput

Warn = Callable[[str], None]

VIDEO_SUFFIXES = frozenset({".avi", ".mp4", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".m4v"})

LAYOUTS = {
    "hmdb51": "ROOT/<class>/<video>.avi and ROOT/testTrainMulti_7030_splits/"
              "<class>_test_split<k>.txt (lines '<video>.avi <0|1|2>')",
    "synthetic": "ROOT/<class>/<video>.avi and ROOT/testTrainMulti_7030_splits/"
                 "<class>_test_split<k>.txt (write one with `mtsearch data synth DIR`)",
    "ucf101": "ROOT/<Class>/v_<Class>_gXX_cYY.avi and ROOT/ucfTrainTestlist/ with classInd.txt, "
              "trainlist0<k>.txt, testlist0<k>.txt",
    "list": "ROOT/train.txt and ROOT/test.txt (lines '<relative path> <0-based label>'), "
            "optional ROOT/classes.txt (one class name per line, line n = label n)",
    "kinetics": "ROOT/annotations/{train,val,test}.csv (header label,youtube_id,time_start,time_end,"
                "split[,is_cc]) and clips ROOT/{train,val}/[<label>/]<youtube_id>_<start:06d>_"
                "<end:06d>.mp4",
    "ssv2": "ROOT/labels/something-something-v2-{labels,train,validation,test}.json and videos "
            "ROOT/20bn-something-something-v2/<id>.webm",
}
# datasets whose copies always miss some listed videos: one counting warning, not one per video
COUNT_MISSING = frozenset({"kinetics", "ssv2"})


@dataclass(frozen=True)
class VideoItem:
    path: Path
    label: int
    name: str  # path relative to the dataset root (posix), for warnings and reports


@dataclass(frozen=True)
class DatasetIndex:
    dataset: str
    root: Path
    split: int
    classes: list[str]
    train: list[VideoItem]
    test: list[VideoItem]
    missing: list[str] = field(default_factory=list)  # listed in a split file, not on disk
    listed: int | None = None  # entries of the lists used (None: train + test + missing)
    unused: dict[str, int] = field(default_factory=dict)  # lists read but not used: {file: entries}

    @property
    def listed_count(self) -> int:
        return self.listed if self.listed is not None else len(self.train) + len(self.test) + len(self.missing)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def layout_error(path: Path, dataset: str, what: str) -> InvalidInput:
    return InvalidInput(path, "data.root", f"{what}; expected layout: {LAYOUTS[dataset]}")


def check_root(root: Path, dataset: str) -> None:
    if not root.exists():
        raise layout_error(root, dataset, "dataset folder not found")
    if not root.is_dir():
        raise layout_error(root, dataset, "not a folder")
    if not any(root.iterdir()):
        raise layout_error(root, dataset, "empty folder")
