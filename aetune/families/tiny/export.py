"""Step 5 for a tiny decoder distilled from a teacher: the preview-decoder file, and its speed against the teacher's.

``<family>_decoder_for_previews.pt`` holds the tiny decoder's weights, its architecture config and the latent
scaling it was trained with (tensors and plain Python only: ``torch.load(path, weights_only=True)``), so a
DiT trained on the teacher's normalised latents can preview its samples without the big decoder:
``load_preview_decoder(path)(z)`` -> images in [-1, 1]. The speed of both decoders is measured on the same
device and latents in the same run and written beside it (``decoder_speed.json``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from aetune.config import config_from_dict
from aetune.io import atomic_torch_save, atomic_write_json
from aetune.models import Autoencoder, create_autoencoder
from aetune.models.registry import register_export

PREVIEW_FORMAT = "aetune.preview_decoder/1"
SPEED_FILE = "decoder_speed.json"


def has_teacher(meta: dict[str, Any]) -> bool:
    """Whether the model of ``meta`` was distilled from a teacher (``distill.teacher`` in its config)."""
    return bool((meta.get("config") or {}).get("distill", {}).get("teacher"))


def preview_export_name(family: str) -> str:
    """``<family>_decoder_for_previews.pt``."""
    return f"{family}_decoder_for_previews.pt"


@torch.inference_mode()
def decode_throughput(decode: Callable[[Tensor], Tensor], z: Tensor, repeats: int = 3) -> float:
    """Images (video: latents) decoded per second by ``decode(z)``: one warm-up call, then ``repeats`` timed."""
    decode(z)
    if z.is_cuda:
        torch.cuda.synchronize(z.device)
    start = time.perf_counter()
    for _ in range(repeats):
        decode(z)
    if z.is_cuda:
        torch.cuda.synchronize(z.device)
    return repeats * z.shape[0] / (time.perf_counter() - start)


def export_preview_decoder(
    out: Path, model: Autoencoder, meta: dict[str, Any], image_size: int, device: torch.device, batch: int = 8
) -> list[Path]:
    """Write the preview decoder and ``decoder_speed.json`` (tiny vs teacher decoder, same latents, same device).

    Returns:
        The two files written.
    """
    from aetune.families.tiny.recipe import load_teacher  # the teacher as training saw it (file and latent scaling)

    teacher = load_teacher(config_from_dict(meta["config"]))
    assert teacher is not None, "has_teacher(meta) is checked first"
    f, c = model.downsample_factor, model.latent_channels
    payload = {
        "format": PREVIEW_FORMAT,
        "family": model.family,
        "model_config": model.config,
        "decoder_state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items() if k.startswith("decoder.")},
        "latent_shift": teacher.shift.cpu(),  # the decoder takes (z - shift) * scale of the teacher's latents z
        "latent_scale": teacher.scale.cpu(),
        "teacher": meta["config"]["distill"]["teacher"],
        "image_size": image_size,
    }
    paths = [atomic_torch_save(payload, out / preview_export_name(model.family))]
    z = torch.randn(batch, c, image_size // f, image_size // f, generator=torch.Generator().manual_seed(0)).to(device)
    model, teacher = model.eval().to(device), teacher.to(device)
    tiny = decode_throughput(lambda v: model.decode(v).sample, z)
    big = decode_throughput(teacher.decode, z)
    speed = {
        "device": str(device),
        "batch": batch,
        "image_size": image_size,
        "tiny_images_per_s": round(tiny, 2),
        "teacher_images_per_s": round(big, 2),
        "speedup": round(tiny / big, 2),
        "tiny_decoder_parameters": sum(p.numel() for p in model.decoder.parameters()),
        "teacher_parameters": sum(p.numel() for p in teacher.model.parameters()),
    }
    paths.append(atomic_write_json(out / SPEED_FILE, speed))
    return paths


class PreviewDecoder(nn.Module):
    """The exported tiny decoder: the teacher's raw latents (B, C, h, w) -> images (B, 3, H, W) in [-1, 1]."""

    def __init__(self, autoencoder: Autoencoder, shift: Tensor, scale: Tensor) -> None:
        super().__init__()
        self.autoencoder = autoencoder.eval()
        self.register_buffer("shift", shift)
        self.register_buffer("scale", scale)

    @torch.inference_mode()
    def forward(self, z: Tensor, normalised: bool = True) -> Tensor:
        """``normalised``: ``z`` is already (z - shift) * scale (a DiT sample); else the teacher's raw latents."""
        z = z if normalised else (z - self.shift) * self.scale
        return self.autoencoder.decode(z).sample.clamp(-1, 1)


def load_preview_decoder(path: str | Path, device: str | torch.device = "cpu") -> PreviewDecoder:
    """Rebuild ``<family>_decoder_for_previews.pt`` (the encoder half stays at initialisation and is unused)."""
    obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    if obj.get("format") != PREVIEW_FORMAT:
        raise ValueError(f"{path} is not a preview decoder ({PREVIEW_FORMAT})")
    model = create_autoencoder(obj["family"], **obj["model_config"])
    model.decoder.load_state_dict({k.removeprefix("decoder."): v for k, v in obj["decoder_state_dict"].items()})
    return PreviewDecoder(model, obj["latent_shift"], obj["latent_scale"]).to(device)


def export_if_distilled(
    out: Path, model: Autoencoder, meta: dict[str, Any], image_size: int, device: torch.device
) -> list[Path]:
    """Step 5's extra export for tiny models: the preview decoder, when the model was distilled from a teacher."""
    return export_preview_decoder(out, model, meta, image_size, device) if has_teacher(meta) else []


for _family in ("taesd", "taehv"):
    register_export(_family, export_if_distilled)
