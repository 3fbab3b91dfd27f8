"""Pretrained weights: download, verify, find offline, place where loaders look, record in a manifest.

``<work_dir>/models/manifest.json`` maps a registry name to ``{path, sha256, bytes, source, revision,
check, licence}``. Steps after step 2 find a weight with :func:`resolve_weight`, which never downloads:
a missing weight is an error naming the file to attach.
"""

from __future__ import annotations

import difflib
import errno
import hashlib
import logging
import os
import re
import shutil
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from huggingface_hub import hf_hub_download
from tqdm.auto import tqdm

from aetune.config import Config, family_schema
from aetune.errors import AetuneError, InvalidArgument
from aetune.io import atomic_path, atomic_write_json, read_json
from aetune.safe_load import CheckpointError, sniff
from aetune.setup.weights_registry import REGISTRY, TORCH_HUB, WeightSpec, section_weight, start_files

log = logging.getLogger(__name__)

MODELS_DIR = "models"
MANIFEST_FILE = "manifest.json"
BUNDLE_INDEX = "aetune_weights.json"
"""Written into a bundle folder: the hashes step 2 verified, so an offline session can check the copies."""
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,})\.[A-Za-z]+$")  # torch hub convention: name-<sha256 prefix>.pth
_CHUNK = 1 << 20
_WRITE_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST, errno.EISDIR, errno.EDQUOT}
"""File-system refusals (they carry a file name; network failures do not)."""


class WeightsUnavailable(AetuneError):
    """A weight file is not on this machine; the message names the file and how to get it."""


class WeightCorrupt(AetuneError):
    """A weight file's size or sha256 differs from the expected one, or it is not a weights file at all."""


class ManifestError(AetuneError):
    """``models/manifest.json`` (or a bundle's index) is damaged or hand-edited; the message says how to fix it."""


MANIFEST_FIX = (
    "re-run step2_download_models.py (with the same --weights_dir as before, if any): it rebuilds the manifest "
    "from the weight files, downloading nothing it finds"
)
_ENTRY_TYPES: dict[str, tuple[type, ...]] = {"path": (str,), "bytes": (int,), "sha256": (str, type(None))}
"""What every manifest entry must hold (``verify_file`` writes more: source, revision, check, licence)."""


@dataclass
class Outcome:
    """What :func:`ensure_weight` did for one weight."""

    name: str
    status: str  # "ok" (verified earlier) | "found" | "downloaded" | "missing" | "corrupt"
    path: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def available(self) -> bool:
        return self.status in ("ok", "found", "downloaded")


def get_spec(name: str) -> WeightSpec:
    """The registry entry called ``name``; unknown names are errors naming the closest one."""
    names = [s.name for s in REGISTRY]
    for spec in REGISTRY:
        if spec.name == name:
            return spec
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise AetuneError(f"unknown weight '{name}'{hint} (known: {', '.join(names)})")


def torch_hub_path(filename: str) -> Path:
    """Where torch's ``load_state_dict_from_url`` looks for ``filename``: ``<hub dir>/checkpoints/``."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def manifest_file(work_dir: Path) -> Path:
    return Path(work_dir) / MODELS_DIR / MANIFEST_FILE


def read_manifest(work_dir: Path, rebuild: bool = False) -> dict[str, dict[str, Any]]:
    """The manifest of ``work_dir`` ({} before step 2 ran), its structure checked.

    Args:
        work_dir: the work directory.
        rebuild: step 2's reading: a damaged manifest is reported as a warning and {} returned (step 2
            then records every weight again, finding the files it verified before).

    Raises:
        ManifestError: (without ``rebuild``) empty, truncated or invalid JSON, not a name -> entry map, or
            an entry without a ``path`` string and a ``bytes`` count; one line naming the file and the fix.
    """
    path = manifest_file(work_dir)
    if not path.exists():
        return {}
    data, problem = _manifest_problem(path)
    if problem is None:
        return data
    if not rebuild:
        raise ManifestError(f"{path} {problem}; {MANIFEST_FIX}")
    log.warning("warning: %s %s: rebuilding it", path, problem)
    return {}


def _manifest_problem(path: Path) -> tuple[dict[str, dict[str, Any]], str | None]:
    """(the manifest at ``path``, None), or ({}, what is wrong with it in words)."""
    if not path.is_file():
        return {}, "is not a file"
    try:
        data = read_json(path)
    except InvalidArgument as e:
        return {}, "is empty" if path.stat().st_size == 0 else f"is not valid JSON ({e.__cause__})"
    if not isinstance(data, dict):
        return {}, f"holds a JSON {type(data).__name__}, not a name -> entry map"
    for name, entry in data.items():
        if not isinstance(entry, dict):
            return {}, f"has an entry '{name}' that is a {type(entry).__name__}, not an object"
        for key, types in _ENTRY_TYPES.items():
            value = entry.get(key)
            if not isinstance(value, types) or isinstance(value, bool):
                return {}, f"has an entry '{name}' without a valid '{key}' (found {value!r})"
    return data, None


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: Path, spec: WeightSpec, sha256: str | None = None, size: int | None = None) -> dict[str, Any]:
    """Check ``path`` against the registry (or the given hash/size when the registry has none).

    Order: exact size, full sha256, else the sha256 prefix in a torch hub file name, else the hash
    is only recorded ("recorded": trusted on first use).

    Returns:
        The manifest entry for the file.

    Raises:
        WeightCorrupt: size or hash differs (the message gives both values).
    """
    actual_size = path.stat().st_size
    want_size = spec.bytes or size
    if want_size is not None and actual_size != want_size:
        raise WeightCorrupt(f"{path} has {actual_size} bytes, expected {want_size}")
    digest = sha256_file(path)
    want = spec.sha256 or sha256
    prefix = _HASH_IN_NAME.search(spec.filename)
    if want:
        check = "sha256"
        ok = digest == want
    elif prefix:
        check, want = "sha256-prefix", prefix.group(1)
        ok = digest.startswith(want)
    else:  # trusted on first use: it must at least be a weights file, not an error page saved as one
        try:
            sniff(path)
        except CheckpointError as e:
            raise WeightCorrupt(str(e)) from e
        check, ok = "recorded", True
    if not ok:
        raise WeightCorrupt(f"{path} has sha256 {digest}, expected {want}")
    return {
        "path": str(path.resolve()),
        "sha256": digest,
        "bytes": actual_size,
        "source": spec.source,
        "revision": spec.revision,
        "check": check,
        "licence": spec.licence,
    }


def place(path: Path, spec: WeightSpec) -> None:
    """Make ``path`` visible where the weight's loader looks (torch hub cache), by symlink."""
    if spec.target != TORCH_HUB:
        return
    link = torch_hub_path(spec.filename)
    if link.exists() and (link.samefile(path) or link.stat().st_size == path.stat().st_size):
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.link")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(path.resolve())
    os.replace(tmp, link)
    log.debug("linked %s -> %s", link, path)


def _download_url(url: str, dest: Path, size: int | None) -> None:
    """Stream ``url`` to ``dest`` through ``dest.part``, resuming a partial file with an HTTP Range request.

    Hand-written because huggingface_hub only fetches from the Hub and torch.hub's
    ``download_url_to_file`` restarts a broken 500 MB download from zero.
    """
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    if size is None or start < size:
        headers = {"Range": f"bytes={start}-"} if start else {}
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as resp:
            if start and resp.status != 206:  # the server ignored Range: it sends the whole file
                start = 0
            length = resp.headers.get("Content-Length")
            total = start + int(length) if length is not None else size
            with (
                open(part, "ab" if start else "wb") as f,
                tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=dest.name) as bar,
            ):
                while chunk := resp.read(_CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
    os.replace(part, dest)


def _download_hf(spec: WeightSpec, dest: Path) -> None:
    """Download from the Hub into a staging folder (resumable there), then move to ``dest``."""
    staging = dest.parent / f".hf-{spec.name}"
    got = hf_hub_download(spec.repo_id, spec.repo_file, revision=spec.revision, local_dir=staging)
    os.replace(got, dest)
    shutil.rmtree(staging)


def download(spec: WeightSpec, dest: Path) -> None:
    """Fetch ``spec`` to ``dest`` (Hugging Face Hub or URL), with a progress bar; no verification."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if spec.repo_id:
        _download_hf(spec, dest)
    else:
        _download_url(str(spec.url), dest, spec.bytes)


class WeightsDirs:
    """Files under ``--weights_dir`` folders (e.g. attached Kaggle datasets), indexed once."""

    def __init__(self, dirs: list[Path]) -> None:
        self.files: list[tuple[Path, PurePosixPath]] = []
        self.bundle: dict[str, dict[str, Any]] = {}  # filename -> {sha256, bytes} from bundle indexes
        for root in dirs:
            if not Path(root).is_dir():
                raise AetuneError(f"--weights_dir {root} is not a folder")
            for dirpath, _, names in os.walk(root, followlinks=True):
                for n in names:
                    p = Path(dirpath) / n
                    self.files.append((p, PurePosixPath(p.relative_to(root).as_posix())))
                    if n == BUNDLE_INDEX:
                        self.bundle.update({e["filename"]: e for e in _bundle_entries(p)})

    def candidates(self, spec: WeightSpec) -> list[Path]:
        """Files named like ``spec`` first, then files of its exact size (checked by hash later)."""
        named = [p for p, rel in self.files if rel.name == spec.filename or any(map(rel.match, spec.patterns))]
        size = spec.bytes or self.bundle.get(spec.filename, {}).get("bytes")
        sized = [p for p, _ in self.files if size and p not in named and p.stat().st_size == size]
        return named + sized


def _bundle_entries(path: Path) -> list[dict[str, Any]]:
    """The entries of a bundle index ({name: {filename, sha256, bytes, source}}), checked."""
    fix = f"re-create the bundle with step2_download_models.py --bundle DIR, or delete {path.name} from it"
    try:
        data = read_json(path)
    except InvalidArgument as e:
        raise ManifestError(f"{path} is not a valid bundle index ({e.__cause__ or 'empty'}): {fix}") from e
    entries = list(data.values()) if isinstance(data, dict) else None
    if entries is None or not all(
        isinstance(e, dict) and isinstance(e.get("filename"), str) and isinstance(e.get("bytes"), int) for e in entries
    ):
        raise ManifestError(f"{path} is not a bundle index (name -> {{filename, sha256, bytes}}): {fix}")
    return entries


def _verified_entry(spec: WeightSpec, path: Path, dirs: WeightsDirs | None, notes: list[str]) -> dict | None:
    """The manifest entry for ``path`` if it verifies, else None with the reason appended to ``notes``."""
    known = dirs.bundle.get(spec.filename, {}) if dirs else {}
    try:
        return verify_file(path, spec, known.get("sha256"), known.get("bytes"))
    except WeightCorrupt as e:
        notes.append(str(e))
        return None


def _intact(entry: dict[str, Any] | None) -> Path | None:
    """The recorded file if it still exists with its recorded size."""
    if entry is None:
        return None
    path = Path(entry["path"])
    return path if path.is_file() and path.stat().st_size == entry["bytes"] else None


def _first_verified(
    spec: WeightSpec, candidates: list[Path], models_dir: Path, dirs: WeightsDirs | None, notes: list[str]
) -> dict[str, Any] | None:
    """The entry of the first candidate that verifies; corrupt files of our own models folder are deleted."""
    tried: set[Path] = set()
    for path in candidates:
        if path.resolve() in tried or not path.is_file():  # the hub link may point at a file just tried
            continue
        tried.add(path.resolve())
        entry = _verified_entry(spec, path, dirs, notes)
        if entry:
            return entry
        if path.parent == models_dir:
            path.unlink()
    return None


def _download_verified(spec: WeightSpec, dest: Path, notes: list[str]) -> tuple[str, dict[str, Any] | None]:
    """Download and verify: ("downloaded", entry), ("missing", None) offline, ("corrupt", None) deleted."""
    try:
        download(spec, dest)
    except OSError as e:
        if e.errno == errno.ENOSPC or (e.errno in _WRITE_ERRNOS and e.filename is not None):
            raise  # our own disk refused the file: not a missing weight (the step says what to fix)
        notes.append(f"download from {spec.source} failed: {e}")
        return "missing", None
    entry = _verified_entry(spec, dest, None, notes)
    if entry is None:
        dest.unlink()
        return "corrupt", None
    return "downloaded", entry


def ensure_weight(
    spec: WeightSpec,
    work_dir: Path,
    manifest: dict[str, dict[str, Any]],
    models_dir: Path | None = None,
    dirs: WeightsDirs | None = None,
    online: bool = True,
    reverify: bool = False,
) -> Outcome:
    """Make one weight available and recorded: manifest, then local copies, then ``dirs``, then download.

    Updates ``manifest`` in memory and on disk after every file, so an interrupted run keeps what it
    verified. A corrupt download is deleted; a corrupt file in ``dirs`` (read-only inputs) is skipped.
    """
    models_dir = Path(models_dir or Path(work_dir) / MODELS_DIR)
    out = Outcome(spec.name, "missing")
    recorded = _intact(manifest.get(spec.name))
    if recorded and (not reverify or _verified_entry(spec, recorded, dirs, out.notes)):
        out.status, out.path = "ok", recorded
        place(recorded, spec)
        return out
    local = [models_dir / spec.filename] + ([torch_hub_path(spec.filename)] if spec.target == TORCH_HUB else [])
    entry = _first_verified(spec, local + (dirs.candidates(spec) if dirs else []), models_dir, dirs, out.notes)
    if entry:
        out.status = "found"
    elif online:
        out.status, entry = _download_verified(spec, models_dir / spec.filename, out.notes)
    if entry is None:
        return out
    out.path = Path(entry["path"])
    manifest[spec.name] = entry
    atomic_write_json(manifest_file(work_dir), manifest)
    place(out.path, spec)
    return out


def missing_message(spec: WeightSpec) -> str:
    """How to get ``spec`` onto a machine: the exact file to attach, or the step 2 command."""
    size = f"{spec.bytes:,} bytes" if spec.bytes else f"~{spec.approx_gb:g} GB"
    return (
        f"weight '{spec.name}' is missing: attach a Kaggle dataset holding {spec.filename} ({size}, from "
        f"{spec.source}) and run step2_download_models.py --weights_dir /kaggle/input/<dataset>, or run "
        f"step2_download_models.py --only {spec.name} with internet"
    )


def write_bundle(manifest: dict[str, dict[str, Any]], bundle_dir: Path, specs: list[WeightSpec]) -> list[str]:
    """Put every recorded weight of ``specs`` into one flat folder (to upload as a Kaggle dataset).

    Files are hard-linked when the bundle is on the same file system, copied otherwise; an index with
    their hashes lets :class:`WeightsDirs` verify them offline. Returns the names not in the manifest.
    """
    bundle_dir.mkdir(parents=True, exist_ok=True)
    index, missing = {}, []
    for spec in specs:
        entry = manifest.get(spec.name)
        if not entry or not Path(entry["path"]).is_file():
            missing.append(spec.name)
            continue
        src, dest = Path(entry["path"]).resolve(), bundle_dir / spec.filename
        if not (dest.exists() and dest.stat().st_size == entry["bytes"]):
            with atomic_path(dest) as tmp:
                if src.stat().st_dev == bundle_dir.stat().st_dev:
                    tmp.unlink()
                    os.link(src, tmp)
                else:
                    shutil.copyfile(src, tmp)
        index[spec.name] = {"filename": spec.filename, **{k: entry[k] for k in ("sha256", "bytes", "source")}}
    atomic_write_json(bundle_dir / BUNDLE_INDEX, index)
    return missing


def resolve_weight(work_dir: Path, name: str) -> Path:
    """The verified local file of weight ``name``, placed where its loader looks. Never downloads.

    Checks the manifest entry and the file size (not the hash: step 2 verified it; hashing 2 GB at
    every start would cost seconds).

    Raises:
        WeightsUnavailable: not recorded by step 2, or the file is gone or has changed size.
    """
    spec = get_spec(name)
    entry = read_manifest(work_dir).get(name)
    path = Path(entry["path"]) if entry else None
    if path is None or not path.is_file() or path.stat().st_size != entry["bytes"]:
        where = f"recorded at {path} but that file is gone or changed" if path else "not in the manifest"
        raise WeightsUnavailable(f"{missing_message(spec)} ({where}: {manifest_file(work_dir)})")
    place(path, spec)
    return path


def recorded_weight(work_dir: Path, name: str) -> Path | None:
    """Like :func:`resolve_weight`, but None (logged) when step 2 has not recorded ``name`` here.

    For optional lookups: the caller's loader then searches its own places and, if the file is
    nowhere, raises its own error naming the file.
    """
    try:
        return resolve_weight(work_dir, name)
    except WeightsUnavailable as e:
        log.debug("%s", e)
        return None


def recorded_release(cfg: Config, work_dir: Path, released_options: bool) -> Path | None:
    """The released model step 2 recorded for ``cfg``'s family, the start of a fine-tune without
    ``--pretrained_path``: every file of :func:`start_files` (several are joined by commas, as the flag takes
    them). None when the family has none, when ``released_options`` is false (``model.args`` build another
    architecture than the family's defaults, which the released files fit; the caller builds the options, this
    layer has no models) or when step 2 did not fetch them all (a partial set is said)."""
    names = start_files(cfg.model.family)
    if not names or not released_options:
        return None
    paths = [recorded_weight(work_dir, name) for name in names]
    missing = [name for name, path in zip(names, paths, strict=True) if path is None]
    if missing:
        if len(missing) < len(names):
            log.warning(
                "step 2 recorded only part of the released %s model (not %s): starting without it; run "
                "step2_download_models.py --only %s", cfg.model.family, ", ".join(missing), ",".join(missing),
            )  # fmt: skip
        return None
    return Path(",".join(str(path) for path in paths))


def attach_recorded_weights(cfg: Config, work_dir: Path) -> None:
    """Point ``cfg`` at the weights step 2 recorded in ``work_dir`` (in place).

    Each pretrained section without a ``weights_path`` (a teacher, a frozen encoder, a discriminator backbone)
    gets the file of :func:`section_weight`; a ``model.args`` folder option left unset gets the folder holding
    its files (``WeightSpec.folder_arg``); the LPIPS backbone is linked into the torch hub cache, where the lpips
    package looks (a new Kaggle session starts with an empty cache). Weights step 2 never recorded are left to
    the loaders' own errors.
    """
    for key, section in cfg.sections.items():
        weight = section_weight(cfg, section)
        path = recorded_weight(work_dir, weight) if weight is not None else None
        if path is not None:
            section.weights_path = str(path)
            log.info("%s weights: %s (from step 2)", key, path)
    _attach_folders(cfg, work_dir)
    if getattr(cfg.loss, "lpips_pretrained", False):
        recorded_weight(work_dir, "lpips_vgg16")


def _attach_folders(cfg: Config, work_dir: Path) -> None:
    """Set each unset ``model.args`` folder option to the one folder where step 2 recorded all its files."""
    schema = family_schema(cfg.model.family)
    specs = [get_spec(name) for name in (schema.needs(cfg) if schema.needs is not None else [])]
    for arg in dict.fromkeys(s.folder_arg for s in specs if s.folder_arg and not cfg.model.args.get(s.folder_arg)):
        assert arg is not None
        files = [(s, recorded_weight(work_dir, s.name)) for s in specs if s.folder_arg == arg]
        folders = {p.parent for s, p in files if p is not None and p.name == s.filename}
        if len(folders) == 1 and all(p is not None and p.name == s.filename for s, p in files):
            cfg.model.args[arg] = str(folders.pop())
            log.info("model.args.%s: %s (from step 2)", arg, cfg.model.args[arg])
        else:
            log.info("model.args.%s is not set from step 2: its files are not all recorded in one folder", arg)
