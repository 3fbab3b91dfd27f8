"""``taehv``: the tiny video autoencoder of madebyollin/taehv, with time x4 down and up.

Layout (the reference's ``TAEHV``, module indices = its state-dict keys): encoder conv(3 p^2, 64), 3 x
[TPool, stride-2 conv, 3 MemBlocks], conv(64, C); decoder Clamp, conv(C, 256), 3 x [3 MemBlocks,
nearest x2, TGrow, conv], ReLU, conv(64, 3 p^2), with widths 256 / 128 / 64 / 64. A ``MemBlock`` sees
its input frame and its previous input frame (zeros for the first), so the model is causal in time.

Frame counts follow the reference: ``T`` frames are padded (by repeating the last) to a multiple of 4
and pooled to ``n = ceil(T / 4)`` latents; the decoder grows them to ``4 n`` frames and drops the first
``frames_to_trim = 3``, giving ``4 n - 3``. Output frame ``j`` reconstructs input frame ``j``, so the
reconstruction target of a clip ``x`` is ``x[:, :4 n - 3]`` (``output_frames``); clips of ``4 n - 3``
frames (5, 9, 13, ...) come back whole.

Both halves run either over all frames at once (``parallel=True``, O(T) memory) or one frame at a time
(``FrameStream``, O(1) memory, the way a live preview decodes); the two give the same frames.
Videos are (B, T, C, H, W) in [-1, 1]; a 4-D (B, C, H, W) batch is a batch of one-frame videos (one
latent each), so image-only code (latent statistics, benchmarks) can use the family too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aetune.families.tiny.init import init_from_scratch
from aetune.families.tiny.taesd import OUTPUT_BIAS_INIT, Clamp, conv, from_unit, to_unit
from aetune.models.base import Autoencoder, FamilyConfig, ModelConfigError
from aetune.models.outputs import DecoderOutput, EncoderOutput
from aetune.models.registry import register_family


class MemBlock(nn.Module):
    """Residual block over (frame, previous frame): (N, n_in, H, W) x 2 -> (N, n_out, H, W)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(conv(2 * n_in, n_out), nn.ReLU(), conv(n_out, n_out), nn.ReLU(), conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: Tensor, past: Tensor) -> Tensor:
        return self.act(self.conv(torch.cat([x, past], 1)) + self.skip(x))


class TPool(nn.Module):
    """Merge ``stride`` consecutive frames: (N*T, C, H, W) -> (N*T/stride, C, H, W) by a bias-free 1x1 conv."""

    def __init__(self, n_f: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n_f * stride, n_f, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        _, c, h, w = x.shape
        return self.conv(x.reshape(-1, self.stride * c, h, w))  # consecutive frames side by side in channels


class TGrow(nn.Module):
    """Split each frame into ``stride`` frames: (N*T, C, H, W) -> (N*T*stride, C, H, W) by a bias-free 1x1 conv."""

    def __init__(self, n_f: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n_f, n_f * stride, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        _, c, h, w = x.shape
        return self.conv(x).reshape(-1, c, h, w)  # channel chunk k is the k-th new frame


def apply_parallel(layers: nn.Sequential, x: Tensor) -> Tensor:
    """Run one half on all frames at once: (B, T, C, H, W) -> (B, T', C', H', W').

    T must be a multiple of the half's total TPool stride (``encode`` pads to one).
    """
    b = x.shape[0]
    h = x.flatten(0, 1)  # (B, T, C, H, W) -> (B*T, C, H, W), frames of one video consecutive
    for layer in layers:
        if isinstance(layer, MemBlock):
            seq = h.unflatten(0, (b, -1))  # (B*T, C, H, W) -> (B, T, C, H, W)
            past = F.pad(seq, (0, 0, 0, 0, 0, 0, 1, 0))[:, :-1]  # shifted one frame later, zeros first
            h = layer(h, past.flatten(0, 1))
        else:
            h = layer(h)
    return h.unflatten(0, (b, -1))  # (B*T', C', H', W') -> (B, T', C', H', W')


class FrameStream:
    """Run one half frame by frame, keeping only what the next frame needs (O(1) memory in T).

    Args:
        layers: the model's ``encoder`` or ``decoder``.
    """

    def __init__(self, layers: nn.Sequential) -> None:
        self.layers = layers
        self.state: list[Tensor | list[Tensor] | None] = [None] * len(layers)

    def push(self, frame: Tensor) -> list[Tensor]:
        """One input frame (B, C, H, W) -> the output frames it completes (0, 1 or several, in order)."""
        frames = [frame]
        for i, layer in enumerate(self.layers):
            frames = [y for x in frames for y in self._step(i, layer, x)]
        return frames

    def _step(self, i: int, layer: nn.Module, x: Tensor) -> list[Tensor]:
        if isinstance(layer, MemBlock):
            past = self.state[i]
            self.state[i] = x
            return [layer(x, torch.zeros_like(x) if past is None else past)]  # type: ignore[arg-type]
        if isinstance(layer, TPool):
            pending = [*(self.state[i] or []), x]  # type: ignore[misc]
            if len(pending) < layer.stride:
                self.state[i] = pending
                return []
            self.state[i] = None
            return [layer.conv(torch.cat(pending, 1))]  # the same channel order as TPool.forward
        if isinstance(layer, TGrow):
            return list(layer.conv(x).chunk(layer.stride, dim=1))
        return [layer(x)]


@dataclass
class TAEHVConfig(FamilyConfig):
    """Options of ``taehv``; the defaults are the released ``taehv`` (HunyuanVideo latents)."""

    latent_channels: int = 16  # the teacher's: 16 HunyuanVideo / Wan 2.1, 32 HunyuanVideo 1.5
    patch_size: int = 1  # pixel (un)shuffle around the network: 1 gives f8, 2 gives f16 (HunyuanVideo 1.5)
    encoder_width: int = 64  # channels of every encoder stage (released: 64)
    decoder_widths: tuple[int, ...] = (256, 128, 64, 64)  # decoder stages, coarse to fine (released)
    encoder_time_downscale: tuple[bool, ...] = (True, True, False)  # TPool stride 2 per stage: time / 4
    decoder_time_upscale: tuple[bool, ...] = (False, True, True)  # TGrow stride 2 per stage: time x 4

    def validate(self) -> None:
        if self.latent_channels <= 0 or self.encoder_width <= 0 or self.patch_size <= 0:
            raise ModelConfigError(
                "latent_channels, patch_size and encoder_width must be positive, got "
                f"{self.latent_channels}, {self.patch_size} and {self.encoder_width}"
            )
        if len(self.decoder_widths) != 4 or min(self.decoder_widths) <= 0:
            raise ModelConfigError(f"decoder_widths must be 4 positive widths, got {list(self.decoder_widths)}")
        for name in ("encoder_time_downscale", "decoder_time_upscale"):
            if len(getattr(self, name)) != 3:
                raise ModelConfigError(f"{name} must have 3 entries (one per stage), got {list(getattr(self, name))}")
        if sum(self.encoder_time_downscale) != sum(self.decoder_time_upscale):
            raise ModelConfigError(
                f"encoder_time_downscale {list(self.encoder_time_downscale)} and decoder_time_upscale "
                f"{list(self.decoder_time_upscale)} must change time by the same factor"
            )


def _video_encoder(c: TAEHVConfig) -> nn.Sequential:
    """(B*T, 3 p^2, H/p, W/p) in [0, 1] -> (B*T/4, C, H/8p, W/8p); one row per stage."""
    w, s = c.encoder_width, [2 if t else 1 for t in c.encoder_time_downscale]
    return nn.Sequential(
        conv(3 * c.patch_size**2, w), nn.ReLU(),
        TPool(w, s[0]), conv(w, w, stride=2, bias=False), MemBlock(w, w), MemBlock(w, w), MemBlock(w, w),
        TPool(w, s[1]), conv(w, w, stride=2, bias=False), MemBlock(w, w), MemBlock(w, w), MemBlock(w, w),
        TPool(w, s[2]), conv(w, w, stride=2, bias=False), MemBlock(w, w), MemBlock(w, w), MemBlock(w, w),
        conv(w, c.latent_channels),
    )  # fmt: skip


def _video_decoder(c: TAEHVConfig) -> nn.Sequential:
    """(B*n, C, h, w) -> (B*4n, 3 p^2, 8h, 8w), nominally [0, 1]; one row per stage."""
    n, s = c.decoder_widths, [2 if t else 1 for t in c.decoder_time_upscale]
    return nn.Sequential(
        Clamp(), conv(c.latent_channels, n[0]), nn.ReLU(),
        MemBlock(n[0], n[0]), MemBlock(n[0], n[0]), MemBlock(n[0], n[0]), nn.Upsample(scale_factor=2), TGrow(n[0], s[0]), conv(n[0], n[1], bias=False),  # noqa: E501
        MemBlock(n[1], n[1]), MemBlock(n[1], n[1]), MemBlock(n[1], n[1]), nn.Upsample(scale_factor=2), TGrow(n[1], s[1]), conv(n[1], n[2], bias=False),  # noqa: E501
        MemBlock(n[2], n[2]), MemBlock(n[2], n[2]), MemBlock(n[2], n[2]), nn.Upsample(scale_factor=2), TGrow(n[2], s[2]), conv(n[2], n[3], bias=False),  # noqa: E501
        nn.ReLU(), conv(n[3], 3 * c.patch_size**2),
    )  # fmt: skip


@register_family(
    "taehv",
    TAEHVConfig,
    "TAEHV: tiny distilled video autoencoder (madebyollin/taehv layout), time x4, f8 or f16",
    tiny={"latent_channels": 4, "encoder_width": 8, "decoder_widths": [16, 8, 8, 8]},
)
class TAEHV(Autoencoder):
    """Video autoencoder: (B, T, 3, H, W) in [-1, 1] <-> latents (B, ceil(T / 4), C, H/f, W/f)."""

    encoder_modules = ("encoder",)
    """What maps images to latents (``aetune.evaluate.export``: the DiT encoder export): the encoder alone."""

    def __init__(self, config: TAEHVConfig) -> None:
        super().__init__(config)
        self.encoder = _video_encoder(config)
        self.decoder = _video_decoder(config)
        ends = [m.conv[-1] for m in self.modules() if isinstance(m, MemBlock)]
        init_from_scratch(self, ends, self.decoder[-1], OUTPUT_BIAS_INIT)  # start grey, as Seraena's TAEHV notebook
        self.patch_size = config.patch_size
        self.in_channels = 3
        self.latent_channels = config.latent_channels
        self.downsample_factor = 8 * config.patch_size
        self.time_downscale = 2 ** sum(config.encoder_time_downscale)
        self.time_upscale = 2 ** sum(config.decoder_time_upscale)
        self.frames_to_trim = self.time_upscale - 1
        """Leading decoder frames dropped: they precede the first input frame (the reference's alignment)."""

    def latent_frames(self, t: int) -> int:
        """Latents for ``t`` input frames: ceil(t / 4)."""
        return -(-t // self.time_downscale)

    def output_frames(self, t: int) -> int:
        """Frames ``decode(encode(x))`` returns for ``t`` input frames: 4 ceil(t / 4) - 3 (input frames 0 ..)."""
        return self.time_upscale * self.latent_frames(t) - self.frames_to_trim

    def check_images(self, x: Tensor) -> None:
        """Raise ``ValueError`` naming the sizes unless ``x`` is (B, T, 3, H, W) or (B, 3, H, W), H, W % f == 0."""
        if x.ndim == 4:
            super().check_images(x)
            return
        if x.ndim != 5 or x.shape[2] != self.in_channels or x.shape[1] == 0:
            raise ValueError(
                f"{self.family} expects videos (B, T, {self.in_channels}, H, W) with T >= 1 or images "
                f"(B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        super().check_images(x[:, 0])

    def encode(self, x: Tensor, parallel: bool = True) -> EncoderOutput:
        """Videos (B, T, 3, H, W) in [-1, 1] -> latents (B, ceil(T/4), C, H/f, W/f) (no posterior).

        Args:
            x: the frames; a (B, 3, H, W) batch is taken as one-frame videos and gives (B, C, H/f, W/f).
            parallel: all frames at once (fast, O(T) memory) or one at a time (same result, O(1) memory).

        Raises:
            ValueError: wrong shape, or H, W not multiples of ``downsample_factor``.
        """
        self.check_images(x)
        if x.ndim == 4:
            return EncoderOutput(latent_dist=None, latents=self.encode(x.unsqueeze(1), parallel).latents[:, 0])
        h = F.pixel_unshuffle(to_unit(x), self.patch_size) if self.patch_size > 1 else to_unit(x)
        pad = -h.shape[1] % self.time_downscale
        h = torch.cat([h, h[:, -1:].expand(-1, pad, -1, -1, -1)], 1) if pad else h  # repeat the last frame
        latents = apply_parallel(self.encoder, h) if parallel else _apply_streaming(FrameStream(self.encoder), h)
        return EncoderOutput(latent_dist=None, latents=latents)

    def decode(self, z: Tensor, parallel: bool = True) -> DecoderOutput:
        """Latents (B, n, C, h, w) -> videos (B, 4n - 3, 3, h*f, w*f), nominally [-1, 1] (not clamped).

        Args:
            z: the latents; a (B, C, h, w) batch (one latent per video) gives images (B, 3, h*f, w*f).
            parallel: all latents at once, or frame by frame as ``stream_decoder`` does (same result).
        """
        if z.ndim == 4 and z.shape[1] == self.latent_channels:
            return DecoderOutput(sample=self.decode(z.unsqueeze(1), parallel).sample[:, 0])
        if z.ndim != 5 or z.shape[2] != self.latent_channels or z.shape[1] == 0:
            raise ValueError(
                f"{self.family} decodes latents (B, n, {self.latent_channels}, h, w) or (B, {self.latent_channels}, "
                f"h, w), got {tuple(z.shape)}"
            )
        if parallel:
            frames = apply_parallel(self.decoder, z)[:, self.frames_to_trim :]
        else:
            frames = _apply_streaming(FrameStream(self.decoder), z)[:, self.frames_to_trim :]
        return DecoderOutput(sample=self._postprocess(frames))

    def stream_decoder(self) -> VideoStreamDecoder:
        """A decoder fed one latent at a time that returns the frames each completes (live previews)."""
        return VideoStreamDecoder(self)

    def _postprocess(self, frames: Tensor) -> Tensor:
        """Decoder output (B, T, 3 p^2, h, w), [0, 1] -> (B, T, 3, p h, p w) in [-1, 1]."""
        return from_unit(F.pixel_shuffle(frames, self.patch_size) if self.patch_size > 1 else frames)

    @property
    def gan_last_layer(self) -> nn.Parameter:
        return self.decoder[-1].weight


class VideoStreamDecoder:
    """Frame-by-frame decoding: ``push(latent)`` -> the frames it completes, in [-1, 1].

    The first ``frames_to_trim`` decoded frames are dropped, so the frames pushed out over a stream are
    exactly ``TAEHV.decode(z)``'s.
    """

    def __init__(self, model: TAEHV) -> None:
        self.model = model
        self.stream = FrameStream(model.decoder)
        self.to_skip = model.frames_to_trim

    def push(self, latent: Tensor) -> list[Tensor]:
        """One latent (B, C, h, w) -> a list of frames (B, 3, h*f, w*f) (4 per latent after the first's 1)."""
        out = []
        for frame in self.stream.push(latent):
            if self.to_skip:
                self.to_skip -= 1
                continue
            out.append(self.model._postprocess(frame.unsqueeze(1))[:, 0])
        return out


def _apply_streaming(stream: FrameStream, x: Tensor) -> Tensor:
    """Push the frames of (B, T, C, H, W) one by one -> (B, T', C', H', W')."""
    out = [y for frame in x.unbind(1) for y in stream.push(frame)]
    return torch.stack(out, 1)
