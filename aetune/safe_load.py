"""Reading weight and checkpoint files without running code from them; what is wrong with one, in one line.

``torch.load(weights_only=True)`` refuses any pickled Python object beyond tensors and plain containers.
Full Lightning checkpoints such as the released VA-VAE may also hold OmegaConf configs (in
``hyper_parameters``), Lightning's ``AttributeDict`` or an ``argparse.Namespace``. Those are read here
through inert stand-in classes: the unpickler fills them with the pickled state as data (no method of the
real class runs, and OmegaConf need not be installed), and :func:`load_torch_file` then turns them into
plain dicts, lists and values. Every other Python object is still refused, naming it.

Before anything is unpickled the file's first bytes say what it is (:func:`sniff`), so an HTML error page,
a Git LFS pointer, an empty or cut-short download gets its own message instead of a pickle error.
"""

from __future__ import annotations

import json
import pickle
import re
import struct
import typing
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aetune.errors import AetuneError

ZIP = "zip"  # torch.save's default format since torch 1.6 (memory-mappable)
PICKLE = "pickle"  # torch.save(..., _use_new_zipfile_serialization=False)
SAFETENSORS = "safetensors"
DEFAULT_FIX = "download or copy it again (step2_download_models.py re-checks what it fetches)"
_HEAD = 64
_NEEDS_CODE = re.compile(r"GLOBAL (\S+) (?:was not an allowed global|whose module)")


class CheckpointError(AetuneError, ValueError):
    """A weights file that cannot be used as asked; the one-line message names the file and the fix."""


class _Inert:
    """Stands in for a pickled config class: keeps what the pickle gives it as data, runs nothing."""

    def __init__(self, *args: Any) -> None:  # reached only through pickle's REDUCE
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _DictConfig(_Inert):
    """``omegaconf.DictConfig``: its state's ``_content`` maps keys to nodes (None / str when unset)."""


class _ListConfig(_Inert):
    """``omegaconf.ListConfig``: its state's ``_content`` is a list of nodes."""


class _Node(_Inert):
    """An OmegaConf value node (``AnyNode``, ``StringNode``, ...): the value is its state's ``_val``."""


class _Metadata(_Inert):
    """OmegaConf (container) metadata: types, flags and the parent link; dropped when converting."""


class _Namespace(_Inert):
    """``argparse.Namespace`` (old Lightning ``hparams``): its state is its attributes."""


def _empty_dict(*_factory: Any) -> dict:
    """``collections.defaultdict(factory)`` -> a plain dict (its items follow as ordinary SETITEMS)."""
    return {}


_NODES = ("AnyNode", "BooleanNode", "BytesNode", "EnumNode", "FloatNode", "IntegerNode", "PathNode", "StringNode")
_ATTRIBUTE_DICT_MODULES = (
    "pytorch_lightning.utilities.parsing",
    "lightning.pytorch.utilities.parsing",
    "lightning_fabric.utilities.data",
    "lightning.fabric.utilities.data",
)
_STAND_INS: list[tuple[Callable[..., Any], str]] = [
    (_DictConfig, "omegaconf.dictconfig.DictConfig"),
    (_ListConfig, "omegaconf.listconfig.ListConfig"),
    *((_Node, f"omegaconf.nodes.{n}") for n in (*_NODES, "InterpolationResultNode")),
    (_Metadata, "omegaconf.base.Metadata"),
    (_Metadata, "omegaconf.base.ContainerMetadata"),
    (_Namespace, "argparse.Namespace"),
    (_empty_dict, "collections.defaultdict"),
    # Lightning's AttributeDict is a dict subclass pickled as a plain dict plus its class: rebuild a dict.
    *((dict, f"{m}.AttributeDict") for m in _ATTRIBUTE_DICT_MODULES),
    # Type references inside OmegaConf metadata (ref_type, object_type): calling them builds only values.
    *((t, f"builtins.{t.__name__}") for t in (dict, list, tuple, int, float, str, bool, bytes)),
    (typing.Any, "typing.Any"),
]  # fmt: skip


def sniff(path: Path, fix: str = DEFAULT_FIX) -> str:
    """What a weights file is, from its size and first bytes: ``ZIP``, ``PICKLE`` or ``SAFETENSORS``.

    Raises:
        CheckpointError: missing, empty, truncated (zip or safetensors), text (HTML page, Git LFS pointer)
            or unknown bytes; the message names ``path`` and ends with ``fix``.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"weights file {p} does not exist" + (" (it is a folder)" if p.is_dir() else ""))
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(_HEAD)
    if size == 0:
        raise CheckpointError(f"{p} is empty (0 bytes): {fix}")
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(p):
            raise CheckpointError(f"{p} is a truncated or damaged zip archive ({size:,} bytes): {fix}")
        return ZIP
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:  # pickle PROTO opcode
        return PICKLE
    if len(head) > 8 and head[8:9] == b"{":  # safetensors: u64 header length, then a JSON header
        (header,) = struct.unpack("<Q", head[:8])
        if 8 + header > size:
            raise CheckpointError(f"{p} is a truncated safetensors file ({size:,} bytes, header says more): {fix}")
        return SAFETENSORS
    text = head.lstrip()
    if text.startswith(b"version https://git-lfs"):
        raise CheckpointError(
            f"{p} is a Git LFS pointer, not the weights: fetch the file itself (git lfs pull), or {fix}"
        )
    if text[:1] == b"<":
        raise CheckpointError(
            f"{p} is an HTML or XML page (an error or login page saved as the file?), not weights: {fix}"
        )
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        shown = head.decode("ascii").splitlines()[0][:40] if head.strip() else ""
        raise CheckpointError(f"{p} is a text file (starts {shown!r}), not weights: {fix}")
    raise CheckpointError(
        f"{p} is neither a PyTorch nor a safetensors file (starts with bytes {head[:8].hex()}): {fix}"
    )


def load_torch_file(path: str | Path, fix: str = DEFAULT_FIX) -> Any:
    """``torch.load`` on CPU without running pickled code; known config objects come back as plain data.

    Zip-format files are memory-mapped, so a 2 GB checkpoint is not read whole. OmegaConf containers
    become dicts / lists of their values (interpolations stay strings), ``AttributeDict`` and
    ``Namespace`` become dicts; metadata and parent links are dropped.

    Raises:
        CheckpointError: what :func:`sniff` finds; a safetensors file; a file that needs a Python object
            aetune does not allow (named in the message); corrupt or truncated content.
    """
    import torch

    p = Path(path)
    kind = sniff(p, fix)
    if kind == SAFETENSORS:
        raise CheckpointError(f"{p} is a safetensors file (tensors only), not a torch checkpoint with its metadata")
    try:
        with torch.serialization.safe_globals(_STAND_INS):
            obj = torch.load(p, map_location="cpu", weights_only=True, mmap=kind == ZIP)
    except pickle.UnpicklingError as e:
        found = _NEEDS_CODE.search(str(e))
        if found:
            raise CheckpointError(
                f"{p} needs pickle to load (the Python object {found.group(1)}); aetune never runs code from a "
                "weights file: re-save its state_dict (or as .safetensors) in a session you trust"
            ) from e
        raise CheckpointError(f"{p} is corrupt or truncated ({_reason(e)}): {fix}") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, TypeError, KeyError, IndexError) as e:
        # torch.load's own messages for damaged archives and cut-short pickles (its format, not our bug)
        raise CheckpointError(f"{p} is corrupt or truncated ({_reason(e)}): {fix}") from e
    return _plain(obj, str(p), set())


def load_safetensors_file(path: str | Path, fix: str = DEFAULT_FIX) -> dict[str, Any]:
    """All tensors of a ``.safetensors`` file (on CPU), with one-line errors naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if sniff(p, fix) != SAFETENSORS:
        raise CheckpointError(f"{p} is named .safetensors but holds a torch pickle: rename it to .pt")
    try:
        return load_file(p)
    except (SafetensorError, json.JSONDecodeError, ValueError) as e:
        raise CheckpointError(f"{p} is not a valid safetensors file ({_reason(e)}): {fix}") from e


def _reason(e: BaseException) -> str:
    """The telling line of a loader's error: torch wraps the real reason in paragraphs of advice."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    told = [line for line in lines if not line.startswith(("Weights only load failed", "Check the documentation"))]
    return (told or lines or [type(e).__name__])[0][:200]


def _plain(obj: Any, source: str, active: set[int]) -> Any:
    """``obj`` with every stand-in replaced by plain data (recursively); a cycle is an error, not a hang."""
    if isinstance(obj, str | bytes | int | float | bool | type(None)) or type(obj).__module__.startswith("torch"):
        return obj
    if id(obj) in active:
        raise CheckpointError(f"{source} holds a self-referencing structure: not a checkpoint aetune can read")
    active.add(id(obj))
    try:
        if isinstance(obj, _Inert):
            state = getattr(obj, "state", None)
            state = state if isinstance(state, dict) else {}
            if isinstance(obj, _Metadata):
                return None
            if isinstance(obj, _Namespace):
                return _plain(state, source, active)
            value = state.get("_val") if isinstance(obj, _Node) else state.get("_content")
            return _plain(value, source, active)
        if isinstance(obj, dict):  # incl. OrderedDict (optimizer and state dicts keep their type)
            out = type(obj)() if type(obj) is not dict else {}
            out.update((k, _plain(v, source, active)) for k, v in obj.items())
            return out
        if isinstance(obj, list | tuple | set):
            return type(obj)(_plain(v, source, active) for v in obj)
        return obj
    finally:
        active.discard(id(obj))
