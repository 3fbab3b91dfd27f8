"""Loading RAE weights strictly from the files people download, and writing the released decoder layout.

Three layouts, told apart by their keys (``detect_layout``):

- ``decoder``: a released decoder ``model.pt`` (``nyu-visionx/RAE-collections``, e.g.
  ``decoders/dinov2/wReg_base/ViTXL_n08/model.pt``): the bare state dict of the reference's
  ``GeneralDecoder``, whose names our ``RAEDecoder`` keeps (``decoder_layers.N.attention.attention.query.*``).
- ``encoder``: a released encoder file (``facebook/dinov2-with-registers-base`` ``model.safetensors`` etc.):
  transformers keys under the encoder's ``file_prefix``; the text tower, the MAE pixel decoder, the pooling
  head and the final LayerNorm's affine (which RAE removes) are skipped, each with its reason.
- ``diffusers``: an ``AutoencoderRAE`` file (``nyu-visionx/RAE-dinov2-wReg-base-ViTXL-n08``
  ``diffusion_pytorch_model.safetensors``): ``encoder.*`` + ``decoder.*`` with diffusers' attention names,
  the encoder normalisation (checked against ours) and optional latent statistics (converted).

Every key is loaded, skipped for a stated reason, or an error; the key mapping is ``map_key`` alone.
"""

from __future__ import annotations

import logging
import pickle
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from aetune.families.rae.encoders import EncoderSpec
from aetune.families.rae.model import LATENT_NORM_EPS, RAE
from aetune.models.loading import (
    CheckpointError,
    LoadReport,
    _few,
    describe_model,
    guess_family,
    read_state_dict,
    register_loader,
)

log = logging.getLogger(__name__)

LAYOUTS = ("decoder", "encoder", "diffusers")
DIFFUSERS_RENAMES = (
    # ours (= the released model.pt) -> diffusers' ``Attention`` names
    (".attention.attention.query.", ".attention.to_q."),
    (".attention.attention.key.", ".attention.to_k."),
    (".attention.attention.value.", ".attention.to_v."),
    (".attention.output.dense.", ".attention.to_out.0."),
)
DIFFUSERS_BUFFERS = ("encoder_mean", "encoder_std", "_latents_mean", "_latents_std")
"""``AutoencoderRAE``'s buffers: checked or converted by ``_diffusers_buffers``, not mapped."""
ENCODER_PREFIX = "encoder.model."
"""Where the transformers encoder sits in our state dict."""
POS_EMBED = "decoder.decoder_pos_embed"
"""Fixed sin-cos table: compared with ours when a file has it (diffusers' files may not), never trained."""
_ENCODER_SKIPS = {
    "dinov2": {"layernorm.": "final LayerNorm affine (RAE removes it)"},
    "mae": {"layernorm.": "final LayerNorm affine (RAE removes it)"},
    "siglip2": {"post_layernorm.": "final LayerNorm affine (RAE removes it)", "head.": "pooling head (unused by RAE)"},
}


@dataclass
class RAELoadReport(LoadReport):
    """``LoadReport`` whose skipped keys carry their reason (``reasons[key]``), summarised by reason."""

    reasons: dict[str, str] = field(default_factory=dict)

    def skip(self, key: str, why: str) -> None:
        self.skipped.append(key)
        self.reasons[key] = why

    def summary(self) -> str:
        lines = [f"loaded {self.loaded} tensors from {self.source}"]
        lines += [f"  skipped {n} x {why}" for why, n in Counter(self.reasons[k] for k in self.skipped).items()]
        if self.missing:
            lines.append(f"  missing (left as they were): {_few(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected (ignored): {_few(self.unexpected)}")
        return "\n".join(lines)


def detect_layout(state: Mapping[str, Tensor], model: RAE) -> str:
    """``decoder`` | ``encoder`` | ``diffusers`` from the keys; ``CheckpointError`` if none fits."""
    # an MAE encoder file also has decoder.decoder_layers.* (its pixel decoder) but no encoder.* keys
    if any(k.startswith("decoder.decoder_layers.") for k in state) and any(k.startswith("encoder.") for k in state):
        return "diffusers"
    if any(k.startswith("decoder_layers.") for k in state):
        return "decoder"
    prefix = model.encoder.spec.file_prefix
    if any(k.startswith(prefix + "embeddings.") for k in state):
        return "encoder"
    guess = guess_family(state)
    raise CheckpointError(
        f"{getattr(state, 'source', 'the weights')} is not an RAE file for encoder {model.encoder.name}: no "
        f"decoder_layers.*, decoder.decoder_layers.* or {prefix}embeddings.* keys (keys start {_few(list(state), 3)})"
        + (f"; it looks like {guess}" if guess else "")
        + ": --pretrained_path for rae takes a released decoder model.pt, a diffusers AutoencoderRAE file or the "
        "encoder's own weights file"
    )


def map_key(key: str, layout: str, spec: EncoderSpec) -> tuple[str | None, str]:
    """A file key -> (our state-dict key, "") or (None, why it is skipped). The one place keys are mapped.

    ``spec`` is the model's encoder (where its keys sit in a released encoder file).
    """
    if layout == "decoder":
        return "decoder." + key, ""
    if layout == "encoder":
        if not key.startswith(spec.file_prefix):
            return None, f"not part of the {spec.kind} vision encoder"
        rest = key[len(spec.file_prefix) :]
        for prefix, why in _ENCODER_SKIPS[spec.kind].items():
            if rest.startswith(prefix):
                return None, why
        return "encoder.model." + rest, ""
    if key.startswith("decoder."):
        for ours, theirs in DIFFUSERS_RENAMES:
            key = key.replace(theirs, ours)
        return key, ""
    if key.startswith("encoder."):
        rest = key[len("encoder.") :]
        # diffusers holds SiglipVisionModel: one extra ``vision_model.`` level before transformers 5
        return "encoder.model." + rest.removeprefix("vision_model."), ""
    return key, ""  # not ours: reported as unexpected


def load_rae_weights(
    model: RAE, path_or_state_dict: str | Path | Mapping[str, Tensor], allow_partial: bool = False
) -> RAELoadReport:
    """Load a released decoder, a released encoder or a diffusers ``AutoencoderRAE`` file into ``model``, strictly.

    Only the part the file holds is replaced (a decoder file leaves the encoder as it is). The file's
    encoder normalisation must equal ours; its latent statistics (diffusers' ``(z - m) / (s + 1e-5)``) are
    converted to ours, ``var = (s + 1e-5)^2 - 1e-5``, and need ``normalize_latents=True``.

    Args:
        model: the ``rae`` model, built with the file's options (encoder, decoder size, patch size).
        path_or_state_dict: a file (``.pt``, ``.pth``, ``.bin``, ``.safetensors``; never unpickled code) or a
            state dict.
        allow_partial: accept missing and unexpected keys (logged as a warning); shape mismatches are errors.

    Returns:
        The ``RAELoadReport`` (each skipped key with its reason).

    Raises:
        CheckpointError: one line naming the file, the layout and the first differing keys or shapes.
    """
    state, source = read_state_dict(path_or_state_dict)
    layout = detect_layout(state, model)
    report = RAELoadReport(source=f"{source} ({layout} layout)")
    stats = _diffusers_buffers(model, state, source, report) if layout == "diffusers" else None
    ours = model.state_dict()
    scope = {"decoder": ("decoder.",), "encoder": ("encoder.",), "diffusers": ("decoder.", "encoder.")}[layout]
    expected = {k for k in ours if k.startswith(scope) and k != POS_EMBED}
    found: dict[str, Tensor] = {}
    encoder_file: dict[str, str] = {}  # file key -> its name inside the encoder (transformers' naming of any version)
    for key, tensor in state.items():
        if layout == "diffusers" and key in DIFFUSERS_BUFFERS:
            continue
        target, why = map_key(key, layout, model.encoder.spec)
        if target == POS_EMBED:
            _check_pos_embed(tensor, ours[POS_EMBED], source)
            report.skip(key, "fixed sin-cos table, checked equal to ours")
        elif target is None:
            report.skip(key, why)
        elif target.startswith(ENCODER_PREFIX):
            encoder_file[key] = target[len(ENCODER_PREFIX) :]
        elif target in expected:
            found[target] = tensor
        else:
            report.unexpected.append(key)
    if encoder_file:
        tensors, unused = _native_encoder_tensors(model, {name: state[key] for key, name in encoder_file.items()})
        found.update({ENCODER_PREFIX + k: v for k, v in tensors.items()})
        report.unexpected += [key for key, name in encoder_file.items() if name in unused]
    report.missing = sorted(expected - set(found))
    bad = [(k, t.shape, ours[k].shape) for k, t in found.items() if t.shape != ours[k].shape]
    if bad:
        key, theirs, mine = bad[0]
        raise CheckpointError(
            f"{source} ({layout} layout) does not fit {describe_model(model)}: {key} is {list(theirs)} there and "
            f"{list(mine)} here ({len(bad)} tensors differ); build the model with the file's encoder and decoder_size"
        )
    if (report.missing or report.unexpected) and not allow_partial:
        raise CheckpointError(
            f"{source} ({layout} layout) does not match {describe_model(model)}: missing {_few(report.missing)}; "
            f"unexpected {_few(report.unexpected)}; use the file's encoder and decoder_size, or allow_partial"
        )
    model.load_state_dict({**ours, **found}, strict=True)
    if stats is not None:
        model.set_latent_stats(*stats)
    report.loaded = len(found)
    if report.missing or report.unexpected:
        log.warning("partial initialisation (allow_partial):\n%s", report.summary())
    return report


def _native_encoder_tensors(model: RAE, tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], set[str]]:
    """Released encoder tensors -> (the installed transformers' names for them, the names it did not use).

    Released files use transformers 4 names (``attention.attention.query``); transformers 5 renamed them
    (``attention.q_proj``). transformers' own loader (``from_pretrained(None, config, state_dict)``) applies
    whatever renaming the installed version needs, so no rename table is kept here. Keys the file lacks
    are simply absent from the result (reported missing by the caller).
    """
    from transformers import PreTrainedModel
    from transformers.utils import logging as hf_logging

    module = model.encoder.model
    if not isinstance(module, PreTrainedModel):  # transformers 4's SigLIP tower: names already native
        return tensors, set()
    # transformers' progress bar and load table would repeat, less precisely, what our report says
    bar, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        loaded, info = type(module).from_pretrained(
            None, config=module.config, state_dict=tensors, output_loading_info=True, ignore_mismatched_sizes=True
        )
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
    if info["mismatched_keys"]:
        key, theirs, mine = sorted(info["mismatched_keys"], key=lambda m: str(m[0]))[0]  # a set: name one stably
        raise CheckpointError(
            f"encoder tensor {key} is {list(theirs)} in the file and {list(mine)} in {describe_model(model)}: "
            "build the model with the file's encoder"
        )
    missing = set(info["missing_keys"])
    native = {k: v for k, v in loaded.state_dict().items() if k in module.state_dict() and k not in missing}
    return native, set(info["unexpected_keys"])


def released_decoder_state_dict(model: RAE) -> dict[str, Tensor]:
    """The decoder as the reference's ``model.pt`` (``pretrained_decoder_path``, loaded there strictly)."""
    return {k[len("decoder.") :]: v.detach() for k, v in model.state_dict().items() if k.startswith("decoder.")}


def read_latent_stats(path: str | Path) -> tuple[Tensor | None, Tensor]:
    """The reference's ``stat.pt``: ``{"mean": tensor or None or absent, "var": tensor}`` -> (mean, var).

    The released DINOv2-B statistics have no mean (RAE issue 33): mean None means zero, as the reference.

    Raises:
        CheckpointError: a missing file, a file needing pickle, or no ``var`` tensor.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"latent statistics file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} needs pickle beyond tensors to load; re-save it as {{'mean', 'var'}} tensors"
        ) from e
    if not isinstance(obj, Mapping) or not isinstance(obj.get("var"), Tensor):
        raise CheckpointError(f"{path} has no 'var' tensor: expected the reference's stat.pt {{'mean', 'var'}}")
    mean = obj.get("mean")
    if mean is not None and not isinstance(mean, Tensor):
        raise CheckpointError(f"{path}: 'mean' is a {type(mean).__name__}, expected a tensor or None")
    return mean, obj["var"]


def _check_pos_embed(theirs: Tensor, ours: Tensor, source: str) -> None:
    if theirs.shape != ours.shape or not torch.allclose(theirs.float(), ours, atol=1e-5, rtol=0):
        raise CheckpointError(
            f"{source}: decoder_pos_embed {list(theirs.shape)} is not the fixed 2-D sin-cos table {list(ours.shape)}; "
            "the file belongs to another decoder grid or architecture"
        )


def _diffusers_buffers(
    model: RAE, state: Mapping[str, Tensor], source: str, report: RAELoadReport
) -> tuple[Tensor | None, Tensor] | None:
    """Check ``encoder_mean`` / ``encoder_std``; our (mean, var) from ``_latents_mean`` / ``_latents_std``, or
    None when they are the identity (diffusers' default)."""
    enc = model.encoder
    mean, std = torch.tensor(enc.spec.mean), torch.tensor(enc.spec.std)
    for key, ours in (("encoder_mean", mean), ("encoder_std", std)):
        if key in state:
            if not torch.allclose(state[key].float().reshape(-1), ours.reshape(-1), atol=1e-6):
                raise CheckpointError(
                    f"{source}: {key} {state[key].flatten().tolist()} differs from encoder {enc.name}'s "
                    f"{ours.flatten().tolist()}: build the model with the file's encoder"
                )
            report.skip(key, "encoder normalisation, checked equal to ours")
    mean, std = state.get("_latents_mean"), state.get("_latents_std")
    present = [k for k in ("_latents_mean", "_latents_std") if k in state]
    if (mean is None or not mean.any()) and (std is None or bool((std == 1).all())):
        for k in present:
            report.skip(k, "identity latent statistics")
        return None
    if not model.config["normalize_latents"]:
        raise CheckpointError(
            f"{source} carries latent statistics (_latents_mean/_latents_std): build the model with "
            "normalize_latents=True to use them"
        )
    for k in present:
        report.skip(k, "latent statistics, converted to latent_mean / latent_var")
    std = torch.ones(1) if std is None else std.float()
    # diffusers: (z - m) / (s + eps); ours: (z - m) / sqrt(v + eps)  =>  v = (s + eps)^2 - eps
    return mean, (std + LATENT_NORM_EPS) ** 2 - LATENT_NORM_EPS


register_loader("rae", load_rae_weights)
