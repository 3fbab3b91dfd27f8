"""What a downstream DiT needs from a fine-tuned autoencoder: the encoder, its latent statistics, the labels.

Two files:
- ``<family>_encoder_for_dit.pt``: encoder + ``quant_conv`` weights, the architecture config, latent
  statistics, the label map and the preprocessing, as tensors and plain Python values only (it loads
  with ``torch.load(path, weights_only=True)``). ``load_encoder`` rebuilds it with aetune's own model
  classes, so there is one copy of the architecture.
- ``<family>_<dataset>_lightningdit.pt``: ``{"state_dict": ...}`` in LightningDiT's key names (no
  teacher, LPIPS or discriminator), which LightningDiT's ``tokenizer/autoencoder.py`` loads unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from aetune.config import RECONSTRUCTION
from aetune.errors import AetuneError
from aetune.evaluate.latent_stats import LatentStatistics
from aetune.io import atomic_torch_save
from aetune.models import create_autoencoder
from aetune.models.base import Autoencoder
from aetune.models.checkpoint import read_checkpoint, run_name
from aetune.models.loading import lightningdit_writer

ENCODER_FORMAT = "aetune.encoder/1"
"""Value of ``"format"`` in an encoder export; bumped when its layout changes."""

ENCODER_MODULES = ("encoder", "quant_conv")
"""Submodules of a LightningDiT-layout autoencoder that map images to the posterior moments."""


def encoder_modules(model: Autoencoder) -> tuple[str, ...]:
    """What maps images to latents: the family's ``encoder_modules`` (submodules or buffers, e.g. RAE's
    ``("encoder", "latent_mean", "latent_var")``), else ``ENCODER_MODULES``."""
    return tuple(getattr(model, "encoder_modules", ENCODER_MODULES))


def encoder_export_name(family: str) -> str:
    """``<family>_encoder_for_dit.pt`` (the seed's ``vavae_encoder_for_dit.pt`` for VA-VAE)."""
    return f"{family}_encoder_for_dit.pt"


def lightningdit_export_name(family: str, dataset: str, task: str = RECONSTRUCTION) -> str:
    """``<family>_<dataset>_lightningdit.pt``, named after the run as its final model (``kl_restoration_...``)."""
    return f"{run_name(family, task)}_{dataset}_lightningdit.pt"


def preprocessing(image_size: int) -> dict[str, Any]:
    """How images must be prepared for the exported encoder (what training fed the autoencoder)."""
    return {
        "image_size": image_size,
        "resize": "bicubic to image_size x image_size, whole image, no crop",
        "channel_order": "RGB",
        "grayscale": "replicated to 3 channels",
        "layout": "NCHW",
        "dtype": "float32",
        "value_range": [-1.0, 1.0],
        "from_uint8": "x = pixels / 127.5 - 1",
    }


def encoder_state_dict(model: Autoencoder) -> dict[str, Tensor]:
    """The weights of ``ENCODER_MODULES`` with their full key names, cloned to CPU.

    Raises:
        AetuneError: the model has no ``encoder`` / ``quant_conv`` (a family without that layout).
    """
    names = encoder_modules(model)
    missing = [name for name in names if not isinstance(getattr(model, name, None), (nn.Module, Tensor))]
    if missing:
        raise AetuneError(
            f"family '{model.family}' has no {', '.join(missing)} module: the DiT encoder export needs the "
            "family's encoder_modules (the LightningDiT layout's encoder and quant_conv by default)"
        )
    state = {
        name: getattr(model, name).detach().cpu().clone() for name in names if isinstance(getattr(model, name), Tensor)
    }
    state |= {
        f"{name}.{key}": value.detach().cpu().clone()
        for name in names
        if isinstance(getattr(model, name), nn.Module)
        for key, value in getattr(model, name).state_dict().items()
    }
    return state


def build_encoder_export(
    model: Autoencoder,
    stats: LatentStatistics,
    labels: dict[str, int],
    image_size: int,
    info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The content of ``<family>_encoder_for_dit.pt`` (tensors and plain Python values only).

    Args:
        model: the fine-tuned autoencoder.
        stats: latent statistics of its training split (``LatentStatsAccumulator.result()``).
        labels: user name -> integer label, as the DiT's class conditioning should use them.
        image_size: the side, in pixels, that the encoder was trained at.
        info: provenance (dataset, stage, source checkpoint, random_teacher ...), plain values.
    """
    lightningdit = stats.lightningdit_stats()
    return {
        "format": ENCODER_FORMAT,
        "family": model.family,
        "model_config": model.config,
        "state_dict": encoder_state_dict(model),
        "latent_channels": model.latent_channels,
        "downsample_factor": model.downsample_factor,
        "latent_shape": list(stats.latent_shape),
        "latent_stats": {
            "mean": lightningdit["mean"],
            "std": lightningdit["std"],
            "shift": stats.shift,
            "scale_factor": stats.scale_factor,
            "source": stats.source,
            "num_images": stats.num_images,
        },
        "labels": dict(labels),
        "preprocessing": preprocessing(image_size),
        "info": dict(info or {}),
    }


class DiTEncoder(nn.Module):
    """An exported encoder: images in [-1, 1] -> latents for a DiT.

    Built by ``load_encoder``. Holds the family's own autoencoder class with only the encoder-side
    modules (the decoder is absent), so its latents are the trained model's, bit for bit.

    Attributes:
        family, model_config, labels, preprocessing, info: as exported.
        latent_mean, latent_std: (1, C, 1, 1) per-channel statistics (buffers, follow ``.to()``).
        shift, scale_factor: the global statistics (floats).
    """

    def __init__(self, autoencoder: Autoencoder, payload: dict[str, Any]) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        stats = payload["latent_stats"]
        self.register_buffer("latent_mean", stats["mean"].float().clone())
        self.register_buffer("latent_std", stats["std"].float().clone())
        self.shift: float = float(stats["shift"])
        self.scale_factor: float = float(stats["scale_factor"])
        self.family: str = payload["family"]
        self.model_config: dict[str, Any] = dict(payload["model_config"])
        self.labels: dict[str, int] = dict(payload["labels"])
        self.preprocessing: dict[str, Any] = dict(payload["preprocessing"])
        self.info: dict[str, Any] = dict(payload.get("info", {}))

    @property
    def latent_channels(self) -> int:
        return self.autoencoder.latent_channels

    @property
    def downsample_factor(self) -> int:
        return self.autoencoder.downsample_factor

    @torch.no_grad()
    def encode(
        self, images: Tensor, sample: bool = False, normalize: bool = False, generator: torch.Generator | None = None
    ) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> latents (B, C, H/f, W/f).

        Args:
            images: preprocessed as ``self.preprocessing`` says.
            sample: draw from the posterior instead of returning its mean (mode).
            normalize: return ``(z - latent_mean) / latent_std`` per channel (LightningDiT's latent norm).
            generator: for reproducible samples.
        """
        out = self.autoencoder.encode(images)
        if sample:
            if out.latent_dist is None:
                raise ValueError(f"family '{self.family}' is deterministic: it has no posterior to sample")
            z = out.latent_dist.sample(generator)
        else:
            z = out.latents
        return self.normalize(z) if normalize else z

    def _channels(self, stat: Tensor, z: Tensor) -> Tensor:
        """(1, C, 1, 1) statistics shaped to broadcast over ``z``'s channels: (1, C, 1, 1, 1) for volumes
        (B, C, d, h, w), (1, 1, C, 1, 1) for a 2-D family's video latents (B, T', C, h, w)."""
        video = z.ndim == 5 and self.autoencoder.spatial_dims == 2
        return stat.reshape(1, 1, -1, 1, 1) if video else stat.reshape(1, -1, *([1] * (z.ndim - 2)))

    def normalize(self, z: Tensor) -> Tensor:
        """Raw latents (B, C, h, w), (B, C, d, h, w) or video (B, T', C, h, w) -> per-channel standardised latents."""
        return (z - self._channels(self.latent_mean, z)) / self._channels(self.latent_std, z)

    def denormalize(self, z: Tensor) -> Tensor:
        """Standardised latents (B, C, ...) -> raw latents (what the autoencoder's decoder takes)."""
        return z * self._channels(self.latent_std, z) + self._channels(self.latent_mean, z)

    def forward(self, images: Tensor) -> Tensor:
        """``encode(images)``: posterior mean, not normalised."""
        return self.encode(images)


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> DiTEncoder:
    """Rebuild the encoder exported by ``save_encoder_export``, in eval mode.

    Args:
        path: a ``<family>_encoder_for_dit.pt`` file.
        device: where to put it.

    Raises:
        AetuneError: a missing, corrupt or truncated file, not an encoder export, or weights that do not
            fit its architecture.
    """
    p = Path(path)
    payload = read_checkpoint(p)
    if payload.get("format") != ENCODER_FORMAT:
        found = payload.get("format")
        raise AetuneError(f"{p} is not an aetune encoder export (format {found!r}, expected {ENCODER_FORMAT!r})")
    # Built on the meta device: the decoder is never materialised, only the exported modules get weights.
    with torch.device("meta"):
        autoencoder = create_autoencoder(payload["family"], **payload["model_config"])
    names = _load_exported(autoencoder, payload["state_dict"], p)
    if any(
        b.is_meta
        for n in names
        if isinstance(getattr(autoencoder, n), nn.Module)
        for b in getattr(autoencoder, n).buffers()
    ):
        # buffers computed in __init__ and not saved (e.g. SigLIP's position ids inside an RAE encoder) stay
        # empty on the meta device: such a family is built for real, at the cost of materialising its decoder
        autoencoder = create_autoencoder(payload["family"], **payload["model_config"])
        _load_exported(autoencoder, payload["state_dict"], p)
    for name in [n for n, _ in autoencoder.named_children()]:
        if name not in names:
            setattr(autoencoder, name, None)  # decoder-side modules: not exported, never used by encode
    encoder = DiTEncoder(autoencoder, payload)
    return encoder.to(device).eval()


def _load_exported(autoencoder: Autoencoder, state: dict[str, Tensor], p: Path) -> tuple[str, ...]:
    """Put the exported weights into ``autoencoder``'s encoder-side modules and buffers; return their names."""
    names = encoder_modules(autoencoder)
    for name in names:
        if isinstance(getattr(autoencoder, name), Tensor):  # a buffer (e.g. latent statistics)
            if name not in state:
                raise AetuneError(f"{p}: the export has no {name}")
            setattr(autoencoder, name, state[name].clone())
            continue
        prefix = f"{name}."
        module: nn.Module = getattr(autoencoder, name)
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(sub, strict=True, assign=True)
        except RuntimeError as e:
            raise AetuneError(f"{p}: the exported {name} weights do not match its architecture ({e})") from e
    return names


def save_encoder_export(
    path: str | Path,
    model: Autoencoder,
    stats: LatentStatistics,
    labels: dict[str, int],
    image_size: int,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write ``build_encoder_export(...)`` to ``path`` atomically."""
    return atomic_torch_save(build_encoder_export(model, stats, labels, image_size, info), path)


def save_lightningdit_checkpoint(path: str | Path, model: Autoencoder) -> Path:
    """Write ``{"state_dict": ...}`` in LightningDiT's key names (no teacher, LPIPS or discriminator).

    LightningDiT's ``tokenizer/autoencoder.py`` reads ``torch.load(path)["state_dict"]``, drops the
    ``loss.*`` keys and loads the rest into its ``AutoencoderKL`` of the same architecture.

    Raises:
        AetuneError: the family does not have LightningDiT's layout.
    """
    writer = lightningdit_writer(model.family)
    if writer is None:
        raise AetuneError(f"family '{model.family}' has no LightningDiT counterpart")
    state = {k: v.cpu().clone() for k, v in writer(model).items()}
    return atomic_torch_save({"state_dict": state}, path)


def export_for_dit(
    out_dir: str | Path,
    model: Autoencoder,
    stats: LatentStatistics,
    labels: dict[str, int],
    image_size: int,
    info: dict[str, Any],
) -> list[Path]:
    """Write the encoder export and, for LightningDiT-layout families, the LightningDiT checkpoint.

    Args:
        out_dir: the results folder.
        model, stats, labels, image_size: as ``build_encoder_export``.
        info: provenance; its ``"dataset"`` and ``"task"`` name the LightningDiT file.

    Returns:
        The files written, the encoder export first.
    """
    out = Path(out_dir)
    written = [save_encoder_export(out / encoder_export_name(model.family), model, stats, labels, image_size, info)]
    if lightningdit_writer(model.family) is not None:
        written.append(
            save_lightningdit_checkpoint(
                out / lightningdit_export_name(model.family, info["dataset"], info["task"]), model
            )
        )
    return written


def _snippet_shapes(
    kind: str, image_size: int, latent_shape: tuple[int, ...] | list[int], time_downscale: int
) -> tuple[str, str]:
    """The snippet's input comment and the latents' shape for data of ``kind``."""
    c, *spatial = latent_shape
    if len(spatial) == 3:
        return (
            "# images: volumes (B, 1, D, H, W) float32 in [-1, 1], transformed as data/dataset.json 'volume' records",
            ", ".join(map(str, [c, *spatial])),
        )
    if kind == "video":
        return (
            f"# images: clips (B, T, 3, {image_size}, {image_size}) float32 RGB frames in [-1, 1] (uint8 / 127.5 - 1)",
            f"ceil(T / {time_downscale}), {c}, {spatial[0]}, {spatial[1]}",
        )
    what = "degraded (LQ) images " if kind == "pair" else ""
    return (
        f"# images: {what}(B, 3, {image_size}, {image_size}) float32 RGB in [-1, 1] (uint8 / 127.5 - 1); see "
        "encoder.preprocessing",
        ", ".join(map(str, [c, *spatial])),
    )


def dit_snippet(
    encoder_path: str | Path,
    image_size: int,
    latent_shape: tuple[int, ...] | list[int],
    *,
    kind: str = "image",
    time_downscale: int = 1,
    lightningdit: str | Path | None = None,
    latents: str | Path | None = None,
) -> str:
    """Python a user pastes into their DiT training code to get latents from the exported encoder.

    Args:
        encoder_path: the ``<family>_encoder_for_dit.pt`` written.
        image_size: the training side in pixels.
        latent_shape: (C, h, w) or (C, d, h, w) of one image's (one frame's, one volume's) latents.
        kind: the run's data kind (``image``, ``pair``, ``video``, ``volume``): what the encoder takes.
        time_downscale: frames per latent frame (video).
        lightningdit: the LightningDiT checkpoint this run wrote, if any.
        latents: the latent-dataset folder this run wrote, if any.
    """
    inputs, shape = _snippet_shapes(kind, image_size, latent_shape, time_downscale)
    lines = [
        "import torch",
        "from aetune import load_encoder",
        "",
        f'encoder = load_encoder("{encoder_path}", device="cuda" if torch.cuda.is_available() else "cpu")',
        inputs,
        f"z = encoder.encode(images, normalize=True)  # (B, {shape}), per-channel standardised: the DiT's input",
        "y = torch.tensor([encoder.labels[user] for user in users])  # class labels for the DiT's conditioning",
        "# after sampling: encoder.denormalize(z_generated) -> latents for the fine-tuned decoder",
    ]
    if latents is not None:
        item = {"video": "clip (a row per clip; its video and first frame in latents_index.json)"}.get(kind, "image")
        lines.append(f"# the latents of every {item}, ready to train on (LightningDiT's ImgLatentDataset): {latents}")
    if lightningdit is not None:
        lines.append(f"# LightningDiT instead: point its tokenizer config's ckpt_path at {lightningdit}")
    return "\n".join(lines)
