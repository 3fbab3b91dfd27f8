"""Hugging Face ``datasets`` folders as step 3 input: validate every row, split, write the ``data/*.json`` contract.

Accepted folders (``--data_root``):
- written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (``dataset_dict.json`` or ``state.json``
  at the top; a single saved ``Dataset`` is the split named by ``--hf_split``);
- a folder of ``.parquet`` files, or of ``.arrow`` files, below it at any depth (a Hub download): split
  names come from the file names by ``datasets``' own patterns (``train-00000-of-00002.parquet``,
  ``data/validation.parquet``, ...; files matching no split are ``train``). These are read through
  ``datasets.load_dataset(<parquet|arrow>, data_dir=...)``, which converts them once into its cache
  (``~/.cache/huggingface/datasets``; ``HF_DATASETS_CACHE`` moves it).

Columns: the image column (default: the first ``datasets.Image`` feature) and an optional label column
(default: the first ``ClassLabel`` feature, else a column named ``label``; none: every row is user
:data:`NO_LABEL`). A ``ClassLabel`` gives its class names; other labels are their text.

Rows are referenced as ``relpath = "hf://<split>/<row index>"`` (the index within that split as stored):
``data/*.json`` keeps the image-folder contract (``user``, ``label``, size, content hash) and steps 4-5
read pixels through :class:`HFRows` instead of opening files. ``dataset.json`` records ``"kind": "hf"`` and
the column names, so a reader needs nothing else.

Validation: every row is decoded by the same check as a file (``aetune.data.scan``): empty, undecodable,
truncated, too small, decompression bombs, a missing image or label, an image path that does not
exist; a bad row is rejected with its reason and never stops the scan.

Split: when ``hf_validation_split`` exists, all of ``hf_split`` trains and all of it validates. Otherwise
``hf_split`` is split per label by ``aetune.data.split`` with ``val_ratio = 1 - train_split`` (said in
the log and in ``split.json``), stable as folders are (content score alone, exact copies together).
The near-duplicate check of folders (``aetune.data.neardup``) is not run: it is quadratic per label and
HF image sets run to millions of rows.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from aetune.data.images import load_rgb, load_rgb_resized
from aetune.data.paired import write_data_documents
from aetune.data.prepare import check_output_dir
from aetune.data.prepared import DATASET_FILE, LABELS_FILE, SPLIT_FILE, PreparedData, Sample, data_dir
from aetune.data.scan import ImageRecord, _check_image, natural_key
from aetune.data.split import check_val_ratio, duplicate_groups, split_records
from aetune.errors import AetuneError
from aetune.io import read_json
from aetune.optional import require

log = logging.getLogger(__name__)

HF_PREFIX = "hf://"
"""Prefix of the relpath of a dataset row: ``hf://<split>/<row index>``."""
KIND = "hf"
"""``dataset.json["kind"]`` of a dataset read from a Hugging Face folder."""
NO_LABEL = "all"
"""User name of every row when the dataset has no label column."""
_SCAN_BATCH = 256  # rows fetched from Arrow at once: bounded memory, few Python round trips


def row_relpath(split: str, index: int) -> str:
    """``hf://<split>/<index>``."""
    return f"{HF_PREFIX}{split}/{index}"


def parse_row_relpath(relpath: str) -> tuple[str, int]:
    """``hf://<split>/<index>`` -> (split, index).

    Raises:
        AetuneError: not a row reference.
    """
    body = relpath.removeprefix(HF_PREFIX)
    split, _, index = body.rpartition("/")
    if not relpath.startswith(HF_PREFIX) or not split or not index.isdigit():
        raise AetuneError(f"{relpath!r} is not a dataset row reference (hf://<split>/<row index>): re-run step 3")
    return split, int(index)


def _data_files(root: Path) -> tuple[list[Path], list[Path]]:
    """(parquet files, arrow files) anywhere below ``root``, hidden folders skipped."""
    parquet, arrow = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if f.endswith(".parquet"):
                parquet.append(Path(dirpath) / f)
            elif f.endswith(".arrow"):
                arrow.append(Path(dirpath) / f)
    return parquet, arrow


def hf_format(root: str | Path) -> str | None:
    """``"save_to_disk"``, ``"parquet"`` or ``"arrow"`` for a Hugging Face dataset folder, None for anything else."""
    p = Path(root)
    if not p.is_dir():
        return None
    if (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
        return "save_to_disk"
    parquet, arrow = _data_files(p)
    if parquet and arrow:
        return "mixed"
    return "parquet" if parquet else "arrow" if arrow else None


def open_hf_splits(root: str | Path, single_split: str = "train", cache_dir: str | None = None) -> tuple[dict, str]:
    """Open every split of a dataset folder (memory-mapped Arrow, nothing decoded).

    Args:
        root: the folder.
        single_split: the name given to a lone ``Dataset`` written by ``save_to_disk``.
        cache_dir: ``datasets`` cache for the parquet/arrow conversion (None: its default).

    Returns:
        (split name -> ``datasets.Dataset``, format).

    Raises:
        AetuneError: ``datasets`` missing, or ``root`` is not a dataset folder.
    """
    datasets = require("datasets", "Hugging Face dataset input")
    p = Path(root).expanduser().resolve()
    fmt = hf_format(p)
    if fmt is None:
        raise AetuneError(
            f"{p} is not a Hugging Face dataset folder (no dataset_dict.json, state.json, parquet or arrow)"
        )
    if fmt == "mixed":
        raise AetuneError(f"{p} holds both .parquet and .arrow files: point --data_root at the folder of one kind")
    try:
        if fmt == "save_to_disk":
            loaded = datasets.load_from_disk(str(p))
            splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {single_split: loaded}
        else:
            splits = dict(datasets.load_dataset(fmt, data_dir=str(p), cache_dir=cache_dir))
    except (datasets.exceptions.DatasetGenerationError, ValueError, OSError, KeyError, TypeError) as e:
        # A damaged or foreign file inside the folder (KeyError, TypeError: a state.json without its fields):
        # the user fixes the folder, not our code.
        cause = e.__cause__ or e
        reason = (str(cause).splitlines() or [""])[0][:300] or "no detail"
        fix = (
            "the folder is damaged or incomplete: copy it again, or write it again with save_to_disk"
            if fmt == "save_to_disk"
            else f"one of its .{fmt} files is damaged or not {fmt} data: copy the folder again, or remove that file"
        )
        raise AetuneError(f"cannot read {p} as {fmt} files ({type(cause).__name__}: {reason}): {fix}") from e
    return {str(k): v for k, v in splits.items()}, fmt


def _closest(name: str, options: list[str]) -> str:
    import difflib

    hit = difflib.get_close_matches(name, options, n=1)
    return f" (did you mean '{hit[0]}'?)" if hit else ""


def choose_columns(features: Any, image_column: str | None, label_column: str | None) -> tuple[str, str | None]:
    """(image column, label column or None) by the module's defaults.

    Raises:
        AetuneError: a named column is missing, or no image column exists.
    """
    datasets = require("datasets", "Hugging Face dataset input")
    names = list(features)
    listing = ", ".join(f"{k} ({type(v).__name__})" for k, v in features.items())
    for flag, given in (("--hf_image_column", image_column), ("--hf_label_column", label_column)):
        if given is not None and given not in features:
            raise AetuneError(f"{flag} {given}: no such column{_closest(given, names)}; columns: {listing}")
    if image_column is None:
        image_column = next((k for k, v in features.items() if isinstance(v, datasets.Image)), None)
        if image_column is None:
            raise AetuneError(
                f"no Image column in the dataset (columns: {listing}): pass --hf_image_column NAME for a column of "
                "image bytes or file paths, or point --data_root at an image dataset"
            )
    if label_column is None:
        label_column = next((k for k, v in features.items() if isinstance(v, datasets.ClassLabel)), None)
        if label_column is None and "label" in features and image_column != "label":
            label_column = "label"
    return image_column, label_column


class _BytesFile(io.BytesIO):
    """In-memory image bytes with the ``stat()`` that ``aetune.data.scan``'s file check reads.

    Rows and files are then validated by one function (same reasons, same pixel digest, same
    decompression-bomb guard); Pillow reads a file object as it reads a path.
    """

    def stat(self) -> os.stat_result:
        return os.stat_result((0, 0, 0, 0, 0, 0, len(self.getbuffer()), 0, 0, 0))


def _row_file(value: Any, root: Path) -> tuple[_BytesFile | Path | None, str]:
    """An image cell (``{"bytes", "path"}`` undecoded) -> something to open, or (None, reason)."""
    if value is None:
        return None, "no image in this row (empty cell)"
    data, path = value.get("bytes"), value.get("path")
    if data is not None:
        return _BytesFile(data), ""
    if path:
        p = Path(path) if Path(path).is_absolute() else root / path
        if p.is_file():
            return p, ""
        return None, f"the row names an image file that does not exist ({path})"
    return None, "no image in this row (neither bytes nor a path)"


@dataclass
class HFScan:
    """What a scan of the chosen splits found (records carry ``hf://`` relpaths)."""

    root: Path
    fmt: str
    image_column: str
    label_column: str | None
    splits: dict[str, int]  # every split of the folder -> rows
    accepted: dict[str, list[ImageRecord]]  # scanned split -> accepted rows
    rejected: list[dict[str, str]]
    users: list[str]


def _label_name(feature: Any, value: Any) -> str | None:
    if value is None:
        return None
    return feature.int2str(int(value)) if hasattr(feature, "int2str") else str(value)


def scan_hf_dataset(
    root: str | Path,
    splits: list[str],
    image_column: str | None = None,
    label_column: str | None = None,
    progress: bool = True,
    cache_dir: str | None = None,
) -> HFScan:
    """Decode every image of ``splits`` and sort the rows into accepted and rejected.

    Raises:
        AetuneError: not a dataset folder, a missing split or column, or no usable row.
    """
    opened, fmt = open_hf_splits(root, splits[0], cache_dir)
    return _scan_opened(opened, fmt, Path(root).expanduser().resolve(), splits, image_column, label_column, progress)


def _scan_opened(
    opened: dict,
    fmt: str,
    p: Path,
    splits: list[str],
    image_column: str | None,
    label_column: str | None,
    progress: bool,
) -> HFScan:
    datasets = require("datasets", "Hugging Face dataset input")
    missing = [s for s in splits if s not in opened]
    if missing:
        raise AetuneError(
            f"--hf_split {missing[0]}: no such split in {p}{_closest(missing[0], list(opened))}; "
            f"splits: {', '.join(f'{k} ({len(v)} rows)' for k, v in opened.items())}"
        )
    img_col, lab_col = choose_columns(opened[splits[0]].features, image_column, label_column)
    result = HFScan(p, fmt, img_col, lab_col, {k: len(v) for k, v in opened.items()}, {}, [], [])
    order: dict[str, int] = {}  # label name -> ClassLabel index (or 0): the label order of labels.json
    for split in splits:
        ds = opened[split]
        if img_col not in ds.features or (lab_col is not None and lab_col not in ds.features):
            raise AetuneError(f"split {split} lacks column {img_col if img_col not in ds.features else lab_col}")
        lab_feature = ds.features[lab_col] if lab_col else None
        cols = [img_col] + ([lab_col] if lab_col else [])
        raw = ds.select_columns(cols).cast_column(img_col, datasets.Image(decode=False))
        accepted: list[ImageRecord] = []
        bar = tqdm(total=len(raw), desc=f"checking {split}", unit="row", disable=not progress)
        for start, batch in zip(range(0, len(raw), _SCAN_BATCH), raw.iter(batch_size=_SCAN_BATCH), strict=True):
            labels = batch[lab_col] if lab_col else [NO_LABEL] * len(batch[img_col])
            for i, (cell, label) in enumerate(zip(batch[img_col], labels, strict=True)):
                rel = row_relpath(split, start + i)
                user = _label_name(lab_feature, label) if lab_col else NO_LABEL
                source, reason = _row_file(cell, p)
                record = None
                if user is None:
                    reason = f"no label in column {lab_col} (empty cell)"
                elif source is not None:
                    record, _, reason = _check_image(source)  # a file Path or a _BytesFile
                if record is None:
                    result.rejected.append({"path": rel, "reason": reason})
                    continue
                record.relpath, record.user = rel, user
                accepted.append(record)
                order.setdefault(user, int(label) if hasattr(lab_feature, "int2str") else 0)
            bar.update(len(batch[img_col]))
        bar.close()
        result.accepted[split] = accepted
    result.users = sorted(order, key=lambda u: (order[u], natural_key(u)))
    if not any(result.accepted.values()):
        first = result.rejected[0] if result.rejected else {"path": "-", "reason": "no rows"}
        raise AetuneError(
            f"no usable image in {', '.join(splits)} of {p} ({len(result.rejected)} rows rejected; first: "
            f"{first['path']}: {first['reason']})"
        )
    return result


@dataclass
class HFSummary:
    """What :func:`prepare_hf_dataset` did, for the printed table (``aetune.data.prepare.format_table``)."""

    data_root: Path
    labels: dict[str, int]
    rows: list[tuple[str, int, int, int, int]]  # (user, label, train, val, rejected)
    rejected: int
    duplicates: int
    validation: str  # how validation was chosen, in words
    changed: bool


def hf_documents(
    scan: HFScan, name: str, hf_split: str, hf_validation_split: str | None, train_split: float, seed: int
) -> dict[str, Any]:
    """``labels.json``, ``dataset.json`` and ``split.json`` of a scanned HF dataset (see the module docstring)."""
    labels = {u: i for i, u in enumerate(scan.users)}
    every = [r for records in scan.accepted.values() for r in records]
    if hf_validation_split in scan.accepted and hf_validation_split != hf_split:  # scanned: it exists
        train = [r.relpath for r in scan.accepted[hf_split]]
        val = [r.relpath for r in scan.accepted[hf_validation_split]]
        how = f"train: all of split '{hf_split}'; val: all of split '{hf_validation_split}'"
        val_ratio = None
    else:
        val_ratio = round(1.0 - train_split, 10)
        train, val = split_records(scan.accepted[hf_split], val_ratio, seed)
        how = (
            f"no '{hf_validation_split}' split: split '{hf_split}' per label by content score, "
            f"train_split {train_split} (val_ratio {val_ratio})"
        )
    dataset = {
        "kind": KIND,
        "name": name,
        "data_root": str(scan.root),
        "hf": {
            "format": scan.fmt,
            "image_column": scan.image_column,
            "label_column": scan.label_column,
            "splits": scan.splits,
            "hf_split": hf_split,
            "hf_validation_split": hf_validation_split,
        },
        "num_users": len(labels),
        "num_images": len(every),
        "accepted": [{**asdict(r), "label": labels[r.user]} for r in every],
        "rejected": scan.rejected,
        "duplicates": duplicate_groups(every),
        "near_duplicate_check": "not run for Hugging Face datasets (quadratic per label): exact copies only",
        "conversion": "decoded and converted to RGB uint8 by aetune.data.images.to_rgb",
    }
    split = {"seed": seed, "val_ratio": val_ratio, "data_root": str(scan.root), "note": how, "train": train, "val": val}
    return {LABELS_FILE: labels, DATASET_FILE: dataset, SPLIT_FILE: split}


def prepare_hf_dataset(
    data_root: str | Path,
    work_dir: str | Path,
    name: str = "hf",
    hf_split: str = "train",
    hf_validation_split: str | None = "validation",
    train_split: float = 0.9,
    seed: int = 42,
    image_column: str | None = None,
    label_column: str | None = None,
    progress: bool = True,
    cache_dir: str | None = None,
) -> HFSummary:
    """Step 3 for a Hugging Face dataset folder: validate every row, split, write ``data/*.json`` as a set.

    Args:
        data_root: the dataset folder.
        work_dir: the work directory.
        name: dataset name used in output file names.
        hf_split: the training split (``--hf_split``).
        hf_validation_split: the validation split, used whole when it exists (None: always split).
        train_split: fraction of ``hf_split`` for training when there is no validation split, in [0.5, 1).
        seed: hash seed of the split.
        image_column, label_column: column names (None: the module's defaults).
        progress: progress bars.
        cache_dir: ``datasets`` cache for parquet/arrow folders.

    Raises:
        AetuneError: bad ``train_split``, unwritable ``work_dir``, a missing split or column, no usable
            row, or no training or validation image (nothing is written then).
    """
    check_val_ratio(round(1.0 - train_split, 10), "1 - --train_split")
    check_output_dir(work_dir)
    opened, fmt = open_hf_splits(data_root, hf_split, cache_dir)
    use_val = hf_validation_split is not None and hf_validation_split in opened and hf_validation_split != hf_split
    if not use_val:
        log.info(
            "no '%s' split in %s (splits: %s): validating on %.0f %% of '%s', chosen by content score",
            hf_validation_split,
            data_root,
            ", ".join(opened),
            100 * (1 - train_split),
            hf_split,
        )
    splits = [hf_split, hf_validation_split] if use_val and hf_validation_split else [hf_split]
    root = Path(data_root).expanduser().resolve()
    scan = _scan_opened(opened, fmt, root, splits, image_column, label_column, progress)
    docs = hf_documents(scan, name, hf_split, hf_validation_split, train_split, seed)
    labels, split = docs[LABELS_FILE], docs[SPLIT_FILE]
    if not split["train"] or not split["val"]:
        side = "training" if not split["train"] else "validation"
        raise AetuneError(f"no {side} image ({len(split['train'])} train, {len(split['val'])} val): check the splits")
    changed = write_data_documents(work_dir, docs)
    train, val = set(split["train"]), set(split["val"])
    every = [r for records in scan.accepted.values() for r in records]
    rows = []
    for user, label in labels.items():
        mine = [r.relpath for r in every if r.user == user]
        rows.append((user, label, sum(p in train for p in mine), sum(p in val for p in mine), 0))
    return HFSummary(
        data_root=scan.root,
        labels=labels,
        rows=rows,
        rejected=len(scan.rejected),
        duplicates=sum(len(g) - 1 for g in docs[DATASET_FILE]["duplicates"]),
        validation=split["note"],
        changed=changed,
    )


class HFRows:
    """Pixels of ``hf://<split>/<row>`` references, for steps 4-5 (the files of an image folder, for rows).

    Args:
        root: the dataset folder (``dataset.json["data_root"]``, or where it is mounted now).
        image_column: ``dataset.json["hf"]["image_column"]``.
        single_split: the split name a lone saved ``Dataset`` was given (``dataset.json["hf"]["hf_split"]``).
        cache_dir: ``datasets`` cache for parquet/arrow folders.
    """

    def __init__(
        self, root: str | Path, image_column: str, single_split: str = "train", cache_dir: str | None = None
    ) -> None:
        datasets = require("datasets", "Hugging Face dataset input")
        self.root = Path(root).expanduser().resolve()
        opened, _ = open_hf_splits(self.root, single_split, cache_dir)
        self.image_column = image_column
        self._splits = {
            k: v.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
            for k, v in opened.items()
        }

    @classmethod
    def from_dataset_doc(cls, dataset: dict[str, Any], root: str | Path | None = None) -> HFRows:
        """The reader of a ``dataset.json`` written by :func:`prepare_hf_dataset`."""
        if dataset.get("kind") != KIND:
            raise AetuneError("dataset.json does not describe a Hugging Face dataset: re-run step 3")
        hf = dataset["hf"]
        return cls(root or dataset["data_root"], hf["image_column"], hf["hf_split"])

    def open(self, relpath: str) -> Path | io.BytesIO:
        """What Pillow can open for ``relpath``: a file path or the row's bytes.

        Raises:
            AetuneError: an unknown split, a row out of range, or a row without an image.
        """
        split, index = parse_row_relpath(relpath)
        if split not in self._splits or index >= len(self._splits[split]):
            raise AetuneError(f"{relpath} is not in {self.root}: the dataset changed since step 3; re-run step 3")
        source, reason = _row_file(self._splits[split][index][self.image_column], self.root)
        if source is None:
            raise AetuneError(f"{relpath}: {reason}; re-run step 3")
        return source

    def rgb(self, relpath: str) -> np.ndarray:
        """Decoded row -> RGB uint8 (H, W, 3), by ``aetune.data.images.to_rgb``."""
        return load_rgb(self.open(relpath))  # Pillow opens the bytes as it opens a path

    def rgb_resized(self, relpath: str, size: int) -> np.ndarray:
        """Decoded row resized as training resizes files -> uint8 (size, size, 3)."""
        return load_rgb_resized(self.open(relpath), size)


@dataclass(frozen=True)
class HFPreparedData(PreparedData):
    """Step 3's split of a Hugging Face dataset: ``path(sample)`` gives the row's image (bytes or file).

    Everything that decodes ``prepared.path(s)`` with Pillow (the image caches of steps 4-5) reads rows
    unchanged. The bytes of a split are held while it is decoded, as the files of a folder are read.
    """

    rows: HFRows | None = None

    def path(self, sample: Sample) -> Path | io.BytesIO:  # type: ignore[override]  # a row, not a file
        """The image of ``sample``'s row, opened as Pillow opens a file."""
        assert self.rows is not None, "load_hf_prepared() sets the reader"
        return self.rows.open(sample.relpath)


def load_hf_prepared(work_dir: str | Path, data_root: str | Path | None = None) -> HFPreparedData:
    """Read what :func:`prepare_hf_dataset` wrote (the ``load_prepared`` of ``"kind": "hf"`` datasets).

    Args:
        work_dir: the work directory.
        data_root: where the dataset folder is now, if it moved since step 3.

    Raises:
        AetuneError: the files are missing or not an HF dataset's, or the first row cannot be read.
    """
    d = data_dir(work_dir)
    for f in (LABELS_FILE, DATASET_FILE, SPLIT_FILE):
        if not (d / f).is_file():
            raise AetuneError(f"{d / f} not found: run step3_prepare_dataset.py with --output_dir {work_dir} first")
    labels, dataset, split = (read_json(d / f) for f in (LABELS_FILE, DATASET_FILE, SPLIT_FILE))
    rows = HFRows.from_dataset_doc(dataset, data_root)
    by_rel = {a["relpath"]: Sample(a["relpath"], a["user"], int(a["label"])) for a in dataset["accepted"]}
    prepared = HFPreparedData(
        data_root=rows.root,
        name=dataset["name"],
        labels=labels,
        train=[by_rel[r] for r in split["train"]],
        val=[by_rel[r] for r in split["val"]],
        rows=rows,
    )
    rows.open(prepared.train[0].relpath)  # a moved or changed dataset fails here, with its reason
    return prepared
