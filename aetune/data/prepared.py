"""Reading what step 3 wrote (``data/labels.json``, ``data/dataset.json``, ``data/split.json``).

Later steps never re-scan folders or guess paths: they take the split and labels from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aetune.errors import AetuneError
from aetune.io import read_json

DATA_SUBDIR = "data"
LABELS_FILE = "labels.json"
DATASET_FILE = "dataset.json"
SPLIT_FILE = "split.json"


@dataclass(frozen=True)
class Sample:
    """One accepted image: its path relative to the data root, its user folder and integer label."""

    relpath: str
    user: str
    label: int


@dataclass(frozen=True)
class PreparedData:
    """The prepared dataset of a work directory."""

    data_root: Path  # folder holding the user folders
    name: str  # dataset name used in output file names
    labels: dict[str, int]  # user folder name -> label, natural order
    train: list[Sample]
    val: list[Sample]

    def path(self, sample: Sample) -> Path:
        """Absolute path of ``sample``."""
        return self.data_root / sample.relpath

    def split(self, which: str) -> list[Sample]:
        """``"train"``, ``"val"`` or ``"all"`` (train then val)."""
        if which == "train":
            return self.train
        if which == "val":
            return self.val
        if which == "all":
            return self.train + self.val
        raise AetuneError(f"unknown split '{which}': use train, val or all")


def data_dir(work_dir: str | Path) -> Path:
    """``<work_dir>/data``."""
    return Path(work_dir) / DATA_SUBDIR


def load_prepared(work_dir: str | Path, data_root: str | Path | None = None) -> PreparedData:
    """Load step 3's files from ``work_dir``.

    Args:
        work_dir: the work directory.
        data_root: where the user folders are now, if not where step 3 saw them (a new Kaggle
            session may mount the dataset elsewhere); relative paths are kept.

    Raises:
        AetuneError: step 3 has not run here, or an image of the split is missing under the root.
    """
    d = data_dir(work_dir)
    for f in (LABELS_FILE, DATASET_FILE, SPLIT_FILE):
        if not (d / f).is_file():
            raise AetuneError(f"{d / f} not found: run step3_prepare_dataset.py with --output_dir {work_dir} first")
    labels: dict[str, int] = read_json(d / LABELS_FILE)
    dataset = read_json(d / DATASET_FILE)
    split = read_json(d / SPLIT_FILE)
    by_rel = {a["relpath"]: Sample(a["relpath"], a["user"], int(a["label"])) for a in dataset["accepted"]}
    root = Path(data_root).expanduser().resolve() if data_root else Path(dataset["data_root"])
    prepared = PreparedData(
        data_root=root,
        name=dataset["name"],
        labels=labels,
        train=[by_rel[r] for r in split["train"]],
        val=[by_rel[r] for r in split["val"]],
    )
    first = (prepared.train + prepared.val)[0]
    if not prepared.path(first).is_file():
        raise AetuneError(
            f"{prepared.path(first)} is missing: the data moved since step 3; pass --data_root with "
            "the folder that holds the user folders, or re-run step 3"
        )
    return prepared
