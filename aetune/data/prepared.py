"""Reading what step 3 wrote (``data/labels.json``, ``data/dataset.json``, ``data/split.json``).

Later steps never re-scan folders or guess paths: they take the split and labels from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aetune.errors import AetuneError, InvalidArgument
from aetune.io import read_json

DATA_SUBDIR = "data"
LABELS_FILE = "labels.json"
DATASET_FILE = "dataset.json"
SPLIT_FILE = "split.json"
DEFAULT_NAME = "microdoppler"
"""Dataset name when step 3 is given none (the seed's file names: ``vavae_microdoppler_final.pt``)."""
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A dataset name becomes part of file names (``vavae_<name>_final.pt``): no separators, no leading dot."""


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a dataset name (with a safe suggestion), or None when it can."""
    if isinstance(name, str) and _SAFE_NAME.fullmatch(name):
        return None
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).lstrip("._-")[:64] or DEFAULT_NAME
    return (
        f"{name!r} cannot be part of a file name: use 1-64 letters, digits, '.', '_' or '-', "
        f"starting with a letter or digit (e.g. {safe})"
    )


def check_dataset_name(name: str, flag: str = "--name") -> None:
    """Raise InvalidArgument naming ``flag`` unless ``name`` is safe in file names."""
    problem = name_problem(name)
    if problem is not None:
        raise InvalidArgument(f"{flag} {problem}")


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


def _regenerate(work_dir: str | Path, dataset: Any = None, split: Any = None) -> str:
    """How to rebuild the files: the step 3 command with what is still known of the last run."""
    dataset = dataset if isinstance(dataset, dict) else {}
    root, name = dataset.get("data_root"), dataset.get("name")
    cmd = f"re-run step3_prepare_dataset.py --output_dir {work_dir}"
    cmd += f" --data_root {root}" if isinstance(root, str) else " --data_root <your data folder>"
    if isinstance(name, str) and name_problem(name) is None and name != DEFAULT_NAME:
        cmd += f" --name {name}"
    if isinstance(split, dict) and isinstance(split.get("seed"), int) and isinstance(split.get("val_ratio"), float):
        # The split depends on the images, the seed and the ratio only, so this command rebuilds it exactly.
        cmd += f" --seed {split['seed']} --val_ratio {split['val_ratio']}"
    return cmd + " to regenerate it"


def _read(path: Path, work_dir: str | Path) -> Any:
    if not path.is_file():
        raise AetuneError(f"{path} not found: run step3_prepare_dataset.py with --output_dir {work_dir} first")
    try:
        return read_json(path)
    except ValueError as e:  # aetune.io.read_json: empty, truncated, hand-edited, or bytes that are not UTF-8
        raise AetuneError(f"{path} is empty or not valid JSON: {_regenerate(work_dir)}") from e


def _is_relpath(p: Any) -> bool:
    return isinstance(p, str) and bool(p) and not p.startswith("/") and ".." not in p.split("/")


def _structure_problem(labels: Any, dataset: Any, split: Any) -> tuple[str, str] | None:
    """(file, what is wrong) for the first structural defect of the three documents, or None."""
    if not isinstance(labels, dict) or not labels:
        return LABELS_FILE, "is not a non-empty mapping of user folder -> label"
    values = list(labels.values())
    if not all(isinstance(k, str) and k for k in labels) or not all(type(v) is int for v in values):
        return LABELS_FILE, "must map user folder names to integer labels"
    if sorted(values) != list(range(len(values))):
        return LABELS_FILE, f"labels must be 0..{len(values) - 1}, each once, got {sorted(values)}"
    if not isinstance(dataset, dict) or not isinstance(dataset.get("accepted"), list):
        return DATASET_FILE, "has no list 'accepted'"
    if not isinstance(dataset.get("data_root"), str):
        return DATASET_FILE, "needs a string field 'data_root'"
    if name_problem(dataset.get("name")) is not None:
        return DATASET_FILE, f"field 'name' {name_problem(dataset.get('name'))}"
    for a in dataset["accepted"]:
        if not (isinstance(a, dict) and _is_relpath(a.get("relpath")) and isinstance(a.get("user"), str)):
            return DATASET_FILE, f"has an accepted entry without a relative 'relpath' and a 'user': {a!r:.80}"
        if type(a.get("label")) is not int:
            return DATASET_FILE, f"entry {a['relpath']} has no integer 'label'"
        if labels.get(a["user"]) != a["label"]:
            return LABELS_FILE, (
                f"disagrees with {DATASET_FILE}: {a['relpath']} of user {a['user']} has label {a['label']}, "
                f"{LABELS_FILE} says {labels.get(a['user'])}"
            )
    if not isinstance(split, dict) or not all(isinstance(split.get(k), list) for k in ("train", "val")):
        return SPLIT_FILE, "needs lists 'train' and 'val'"
    known = {a["relpath"] for a in dataset["accepted"]}
    listed = split["train"] + split["val"]
    unknown = next((p for p in listed if not isinstance(p, str) or p not in known), None)
    if unknown is not None:
        return SPLIT_FILE, f"lists {unknown!r:.80}, which is not an accepted image of {DATASET_FILE}"
    if len(set(listed)) != len(listed):
        twice = next(p for p in listed if listed.count(p) > 1)
        return SPLIT_FILE, f"lists {twice} twice (an image in both train and val is validated on what it trained on)"
    if not split["train"]:
        return SPLIT_FILE, "has an empty training list"
    train = set(split["train"])
    for group in dataset.get("groups", []):  # absent in files written before near-duplicates were grouped
        if not isinstance(group, list):
            return DATASET_FILE, "has a 'groups' entry that is not a list of paths"
        sides = {p in train for p in group if p in known}
        if len(sides) > 1:
            return SPLIT_FILE, f"puts duplicates on both sides ({', '.join(map(str, group[:3]))})"
    return None


def load_prepared(work_dir: str | Path, data_root: str | Path | None = None) -> PreparedData:
    """Load step 3's files from ``work_dir`` and check them against each other and the disk.

    Args:
        work_dir: the work directory.
        data_root: where the user folders are now, if not where step 3 saw them (a new Kaggle
            session may mount the dataset elsewhere); relative paths are kept.

    Raises:
        AetuneError: step 3 has not run here; a file is empty, not JSON, or hand-edited into a wrong
            structure (labels that disagree with the dataset, split entries that are no accepted
            image, an image on both sides); or images of the split are missing under the root. The
            message names the file and the step 3 command that regenerates it.
    """
    d = data_dir(work_dir)
    labels, dataset, split = (_read(d / f, work_dir) for f in (LABELS_FILE, DATASET_FILE, SPLIT_FILE))
    problem = _structure_problem(labels, dataset, split)
    if problem is not None:
        fname, what = problem
        raise AetuneError(f"{d / fname} {what}: {_regenerate(work_dir, dataset, split)}")
    if dataset.get("kind") in ("paired", "hf"):  # LQ/GT pairs (val:// under --val_root), dataset rows (hf://)
        from aetune.data.hf_source import load_hf_prepared
        from aetune.data.paired import load_paired

        return (load_paired if dataset["kind"] == "paired" else load_hf_prepared)(work_dir, data_root)
    by_rel = {a["relpath"]: Sample(a["relpath"], a["user"], a["label"]) for a in dataset["accepted"]}
    root = Path(data_root).expanduser().resolve() if data_root else Path(dataset["data_root"])
    prepared = PreparedData(
        data_root=root,
        name=dataset["name"],
        labels=labels,
        train=[by_rel[r] for r in split["train"]],
        val=[by_rel[r] for r in split["val"]],
    )
    # Rows referenced as hf://<split>/<row> live inside dataset files (aetune.data.hf_source), not as files.
    samples = [s for s in prepared.train + prepared.val if "://" not in s.relpath]
    missing = [s.relpath for s in samples if not prepared.path(s).exists()]  # a video may be a folder of frames
    if samples and len(missing) == len(samples):
        raise AetuneError(
            f"{root} holds none of the {len(samples)} images of {d / SPLIT_FILE}: the data moved since step 3; "
            "pass --data_root with the folder that holds the user folders, or re-run step 3"
        )
    if missing:
        raise AetuneError(
            f"{len(missing)} of the {len(samples)} images of {d / SPLIT_FILE} are missing under {root} "
            f"(first: {missing[0]}): the dataset changed since step 3; "
            f"{_regenerate(work_dir, dataset, split)}"
        )
    return prepared
