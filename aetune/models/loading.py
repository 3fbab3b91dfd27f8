"""Reading weight files safely, comparing them strictly with a model, and the one ``load_weights`` for every family.

Each family registers how its released layouts load (:func:`register_loader`, in
``aetune/families/<family>/loading.py``); :func:`load_weights` dispatches on the model's family. Every key of
a file is accounted for: loaded, skipped for a stated reason, or a one-line error naming the file.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from aetune.config import import_registered
from aetune.models.base import Autoencoder
from aetune.safe_load import SAFETENSORS, CheckpointError, load_safetensors_file, load_torch_file, sniff

log = logging.getLogger(__name__)

DISCRIMINATOR_PREFIX = "loss.discriminator."
"""Where LightningDiT keeps the PatchGAN discriminator (inside its loss module)."""
SKIPPED_PREFIXES = {
    "foundation_model.": "the teacher is built from timm (FrozenTeacher)",
    "loss.perceptual_loss.": "LPIPS comes from the lpips package (build_lpips)",
}
LOGVAR_KEY = "loss.logvar"
"""LDM's learnable output log-variance. LightningDiT never gives it to an optimizer, so it stays 0 and
the nll is plain L1 + LPIPS; our objective assumes exactly that, so a non-zero value is an error."""


@dataclass
class LoadReport:
    """What a loader did with every key of the checkpoint.

    Attributes:
        source: the file (``"<state dict>"`` for a mapping built in memory).
        loaded: number of tensors copied into the model and the discriminator.
        missing: keys the model (or discriminator, as ``loss.discriminator.*``) has and the file lacks.
        unexpected: keys of the file nothing takes.
        skipped: keys deliberately not loaded (teacher, LPIPS, ``loss.logvar``, the discriminator when
            none is passed).
    """

    source: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines: counts, the missing and unexpected keys, skipped groups by prefix."""
        groups = Counter(_group(k) for k in self.skipped)
        lines = [f"loaded {self.loaded} tensors from {self.source}"]
        lines += [f"  skipped {n} x {g}" for g, n in groups.items()]
        if self.missing:
            lines.append(f"  missing (left at initialisation): {_few(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected (ignored): {_few(self.unexpected)}")
        return "\n".join(lines)


class StateDict(dict):
    """A ``{key: tensor}`` dict that remembers the file it came from, so later errors name that file."""

    def __init__(self, tensors: Mapping[str, Tensor], source: str) -> None:
        super().__init__(tensors)
        self.source = source


def read_state_dict(src: str | Path | Mapping[str, Tensor], source: str | None = None) -> tuple[StateDict, str]:
    """A flat ``{key: tensor}`` in LightningDiT's layout from a file or mapping, never executing pickle code.

    Files are recognised by content, not by name (:func:`aetune.safe_load.sniff`): ``.safetensors``, or
    ``torch.save`` files (memory-mapped when zipped, so a 2 GB checkpoint is not read whole) whose
    harmless config objects (OmegaConf ``hyper_parameters``) are read as data. A Lightning checkpoint is
    unwrapped to its ``state_dict``; aetune's own stage checkpoints and ``*_final.pt`` files are put in
    the released layout (``autoencoder.*`` -> ``*``, discriminator -> ``loss.discriminator.*``).

    Args:
        src: a file, or a mapping (e.g. a ``StateDict`` from an earlier call, which keeps its name).
        source: the name for messages when ``src`` is a plain mapping (default ``"<state dict>"``).

    Returns:
        (state dict, the name messages use: the path given).

    Raises:
        CheckpointError: one line naming the file: missing, empty, truncated, text, a file that needs
            pickle code, or content that is not a state dict.
    """
    if isinstance(src, Mapping):
        obj, name = src, source or getattr(src, "source", "<state dict>")
    else:
        path = Path(src)
        name = str(path)
        obj = load_safetensors_file(path) if sniff(path) == SAFETENSORS else load_torch_file(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{name} holds a {type(obj).__name__}, not a state dict")
    obj = _released_layout(obj, name)
    odd = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if odd:
        raise CheckpointError(f"{name} is not a state dict: {_few(odd)} are not tensors")
    return StateDict(obj, name), name


def _released_layout(obj: Mapping, name: str) -> Mapping:
    """The tensors of a checkpoint in the released key layout (see :func:`read_state_dict`)."""
    if isinstance(obj.get("discriminator_state_dict"), Mapping) and isinstance(obj.get("state_dict"), Mapping):
        disc = {DISCRIMINATOR_PREFIX + k: v for k, v in obj["discriminator_state_dict"].items()}
        return {**obj["state_dict"], **disc}  # aetune *_final.pt
    if not isinstance(obj.get("state_dict"), Mapping):
        return obj  # a plain state dict
    state = obj["state_dict"]  # a Lightning checkpoint
    if "aetune" not in obj:
        return state
    out = {}
    for key, tensor in state.items():  # an aetune stage checkpoint: autoencoder.* and discriminator.*
        if key.startswith("autoencoder."):
            out[key.removeprefix("autoencoder.")] = tensor
        elif key.startswith("discriminator."):
            out[DISCRIMINATOR_PREFIX + key.removeprefix("discriminator.")] = tensor
        else:
            raise CheckpointError(f"{name} is an aetune checkpoint with an unknown key {key}: it was edited")
    return out


_LOADERS: dict[str, Callable[..., LoadReport]] = {}


def register_loader(family: str, loader: Callable[..., LoadReport]) -> None:
    """Register ``loader(model, *sources, **options) -> LoadReport`` as how ``family``'s released weights load."""
    _LOADERS[family] = loader


_LIGHTNINGDIT_WRITERS: dict[str, Callable[[Autoencoder], dict[str, Tensor]]] = {}


def register_lightningdit_writer(family: str, writer: Callable[[Autoencoder], dict[str, Tensor]]) -> None:
    """Register ``writer(model) -> state dict``: ``family`` in LightningDiT's tokenizer layout (step 5)."""
    _LIGHTNINGDIT_WRITERS[family] = writer


def lightningdit_writer(family: str) -> Callable[[Autoencoder], dict[str, Tensor]] | None:
    """The family's LightningDiT-layout writer, or None when LightningDiT's code cannot load the family."""
    import_registered(family)
    return _LIGHTNINGDIT_WRITERS.get(family)


def load_weights(model: Autoencoder, *sources: str | Path | Mapping[str, Tensor], **options: Any) -> LoadReport:
    """Load any released layout the model's family reads (files or state dicts), strictly.

    Dispatches on ``model.family`` to the family's registered loader: LightningDiT checkpoints for ``kl`` and
    ``vavae`` (``discriminator=``, ``allow_partial=``), released or diffusers RAE files for ``rae``, released
    or diffusers TAESD/TAEHV halves for ``taesd``/``taehv``, MONAI ``AutoencoderKL`` state dicts for ``kl3d``.

    Raises:
        CheckpointError: one line naming the file and the model (see each family's loader).
        TypeError: an option the family's loader does not take.
    """
    import_registered(model.family)
    if model.family not in _LOADERS:
        raise CheckpointError(f"family '{model.family}' registers no weight loader")
    return _LOADERS[model.family](model, *sources, **options)


def compare_strictly(
    model: nn.Module,
    state: Mapping[str, Tensor],
    source: str,
    shape_fix: str,
    keys_fix: str,
    allow_partial: bool = False,
) -> LoadReport:
    """Compare ``state`` with ``model``'s state dict before loading it: the report of missing and unexpected keys.

    Args:
        shape_fix, keys_fix: how to fix tensors of other shapes / other keys, appended to the error.
        allow_partial: report missing and unexpected keys instead of refusing them (shapes must still fit).

    Raises:
        CheckpointError: tensors of other shapes, or (unless ``allow_partial``) missing or unexpected keys.
    """
    expected = model.state_dict()
    report = LoadReport(source=source)
    report.missing = [k for k in expected if k not in state]
    report.unexpected = [k for k in state if k not in expected]
    bad = [(k, list(v.shape), list(expected[k].shape)) for k, v in state.items() if k in expected]
    bad = [b for b in bad if b[1] != b[2]]
    if bad:
        key, theirs, ours = bad[0]
        raise CheckpointError(
            f"{source} does not fit the model ({describe_model(model)}): {key} is {theirs} there and {ours} here "
            f"({len(bad)} tensors differ); {shape_fix}"
        )
    if (report.missing or report.unexpected) and not allow_partial:
        raise CheckpointError(
            f"{source} does not match the model ({describe_model(model)}): missing {_few(report.missing)}; "
            f"unexpected {_few(report.unexpected)}; {keys_fix}"
        )
    return report


def describe_model(model: Autoencoder) -> str:
    """``family(options that differ from the defaults)``, e.g. ``vavae(ch=32)`` or ``kl(defaults)``."""
    default = model.config_cls().to_dict()
    diff = {k: v for k, v in model.config.items() if default.get(k) != v}
    return f"{model.family}({', '.join(f'{k}={v}' for k, v in diff.items()) or 'defaults'})"


def guess_family(state: Mapping[str, object]) -> str | None:
    """Which family's weights a state dict looks like, in words (``"a taesd encoder (taesd_encoder.pth)"``), or None.

    Only the key names are read, so a file given to the wrong family is named in the error instead of being
    reported as a list of missing keys. Checked in an order where no earlier layout is a subset of a later one.
    """
    keys = list(state)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("x_embedder.") or has("t_embedder.") or has("final_layer.adaLN"):
        return "a DiT / LightningDiT diffusion transformer, not an autoencoder"
    if has("quant_conv_mu."):
        return "a MONAI 3-D AutoencoderKL (family kl3d)"
    if "encoder.conv_in.weight" in state and "post_quant_conv.weight" in state:
        return "a vavae (VA-VAE) checkpoint" if "linear_proj.weight" in state else "a kl (LDM KL-VAE) checkpoint"
    if has("encoder.down_blocks.") or has("decoder.up_blocks."):
        return "a diffusers AutoencoderKL (an SD-style VAE; aetune's kl family reads the LDM layout)"
    if has("decoder.decoder_layers.") and has("encoder."):
        return "a diffusers AutoencoderRAE (family rae)"
    if has("decoder_layers."):
        return "a released RAE decoder model.pt (family rae)"
    if any("embeddings.patch_embeddings." in k or "embeddings.patch_embedding." in k for k in keys):
        return "a ViT vision encoder (DINOv2 / SigLIP / MAE: an RAE encoder file, family rae)"
    if has("encoder.layers.") or has("decoder.layers."):
        return "a diffusers AutoencoderTiny (family taesd)"
    if keys and all(re.match(r"^(encoder|decoder)\.\d+\.", k) for k in keys):
        return "a tiny autoencoder in aetune's layout (family taesd or taehv)"
    if "0.weight" in state and has("1.conv."):
        return "a released TAESD encoder half (taesd_encoder.pth, family taesd)"
    if "1.weight" in state and has("3.conv.") and not has("0."):
        return "a released TAESD decoder half (taesd_decoder.pth, family taesd)"
    if has("main.") and any(k.endswith(".weight") for k in keys) and all(k.startswith("main.") for k in keys):
        return "a PatchGAN discriminator alone"
    return None


def describe_checkpoint(state: Mapping[str, Tensor]) -> str:
    """What a state dict looks like: an LDM KL layout with or without ``linear_proj``, its widths."""
    if "encoder.conv_in.weight" not in state or "post_quant_conv.weight" not in state:
        guess = guess_family(state)
        return f"not an LDM KL autoencoder: keys start {_few(list(state), 3)}" + (
            f"; it looks like {guess}" if guess else ""
        )
    family = "vavae" if "linear_proj.weight" in state else "kl"
    levels = len({k.split(".")[2] for k in state if k.startswith("encoder.down.")})
    ch = state["encoder.conv_in.weight"].shape[0]
    z = state["post_quant_conv.weight"].shape[1]
    return f"a {family} checkpoint: ch={ch}, {levels} levels, embed_dim={z}"


def _group(key: str) -> str:
    for prefix in (*SKIPPED_PREFIXES, DISCRIMINATOR_PREFIX):
        if key.startswith(prefix):
            return f"{prefix}* ({SKIPPED_PREFIXES.get(prefix, 'no discriminator passed')})"
    return f"{key} (checked: 0)" if key == LOGVAR_KEY else key


def _few(keys: list[str], n: int = 6) -> str:
    if not keys:
        return "none"
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more
