"""Seraena (madebyollin/seraena): the conditional adversarial objective the reference trains tiny decoders with.

A patch discriminator sees an image together with the latents it was decoded from (nearest-upsampled and
concatenated on the channel axis) and predicts per-patch scores from every one of its six blocks. It learns
by regression: MSE to +1 for fakes and -1 for reals, on a batch where each sample is, by a coin flip, the real
image or a fake, half the fakes fresh and half replayed from a buffer of earlier ones (so it keeps judging
every kind of fake the generator has made). The generator never sees a GAN loss: it regresses onto its own
output moved by a *correction*, the negative gradient of the discriminator-feature distance between the
real and the fake image, scaled to unit standard deviation, so its step size does not depend on how well
the discriminator is doing.

Written from the reference's description and code (``seraena.py``), not copied; the differences are ours:
the discriminator's update runs in the recipe's discriminator phase after the generator's (the reference
updates it first, inside the generator step, so the correction uses the discriminator of the previous batch
here), and the replay buffer is part of the discriminator's state dict (two float16 buffers), so a resumed
run continues with the same buffer; it holds ``buffer`` fakes (the reference: 16,384 in RAM).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WIDTHS = (1, 2, 4, 8, 8, 8)
"""Block widths in units of ``ndf`` (the reference: 64, 128, 256, 512, 512, 512)."""
STRIDES = (1, 2, 2, 2, 1, 1)
SCORE_STRIDE = 8
"""Scores come out on a grid of H/8 x W/8 patches."""


def _conv_bn_relu(n_in: int, n_out: int, stride: int) -> nn.Sequential:
    """A 3x3 (4x4 when strided) bias-free conv, BatchNorm, ReLU: (B, n_in, H, W) -> (B, n_out, H/stride, W/stride)."""
    return nn.Sequential(
        nn.Conv2d(n_in, n_out, 4 if stride == 2 else 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(n_out),
        nn.ReLU(),
    )


class ContextPatchDiscriminator(nn.Module):
    """Seraena's discriminator: (image (B, C_im, H, W) in [-1, 1], latents (B, C_ctx, h, w)) -> scores
    (B, 6, H/8, W/8), one channel per block (its 1x1 projection, average-pooled to the score grid).

    Args:
        image_channels: 3, or 3 x frames for grouped video frames (TAEHV).
        context_channels: the latent channels.
        ndf: width of the first block (the reference: 64).
        buffer: fakes the replay buffer keeps: ``replay_images`` (N, C_im, H, W) and ``replay_contexts``
            (N, C_ctx, h, w), float16, persistent (N grows to ``buffer``; a new shape starts it afresh).
    """

    def __init__(self, image_channels: int, context_channels: int, ndf: int = 64, buffer: int = 256) -> None:
        super().__init__()
        widths = [ndf * w for w in WIDTHS]
        ins = [image_channels + context_channels, *widths[:-1]]
        self.blocks = nn.ModuleList(_conv_bn_relu(i, o, s) for i, o, s in zip(ins, widths, STRIDES, strict=True))
        self.proj = nn.ModuleList(nn.Conv2d(w, 1, 1, bias=False) for w in widths)
        self.buffer_size = buffer
        self.register_buffer("replay_images", torch.zeros(0, image_channels, 0, 0, dtype=torch.float16))
        self.register_buffer("replay_contexts", torch.zeros(0, context_channels, 0, 0, dtype=torch.float16))

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        grid = (x.shape[-2] // SCORE_STRIDE, x.shape[-1] // SCORE_STRIDE)
        h = torch.cat([x, F.interpolate(context.to(x.dtype), x.shape[-2:])], 1)  # nearest, as the reference
        scores = []
        for block, proj in zip(self.blocks, self.proj, strict=True):
            h = block(h)
            scores.append(F.adaptive_avg_pool2d(proj(h), grid))
        return torch.cat(scores, 1)

    def push(self, fakes: Tensor, contexts: Tensor, generator: torch.Generator) -> None:
        """Add each of ``fakes`` (B, C_im, H, W) with its ``contexts`` (B, C_ctx, h, w) to the replay buffer;
        once it is full each replaces a random entry (drawn from ``generator``, the batch's: a resumed run draws
        the same; the reference uses Python's ``random``)."""
        fakes, contexts = fakes.detach().half(), contexts.detach().half()
        if (self.replay_images.shape[1:], self.replay_contexts.shape[1:]) != (fakes.shape[1:], contexts.shape[1:]):
            self.replay_images, self.replay_contexts = fakes[:0].clone(), contexts[:0].clone()  # a new stage size
        room = max(0, self.buffer_size - len(self.replay_images))
        self.replay_images = torch.cat([self.replay_images, fakes[:room]])
        self.replay_contexts = torch.cat([self.replay_contexts, contexts[:room]])
        for i in range(room, len(fakes)):
            j = int(torch.randint(self.buffer_size, (), generator=generator, device=generator.device))
            self.replay_images[j], self.replay_contexts[j] = fakes[i], contexts[i]

    def replayed(self, n: int, dtype: torch.dtype, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` (fake, latents) pairs drawn from the buffer with replacement, in ``dtype``."""
        picks = torch.randint(len(self.replay_images), (n,), generator=generator, device=generator.device)
        picks = picks.to(self.replay_images.device)
        return self.replay_images[picks].to(dtype), self.replay_contexts[picks].to(dtype)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        for name in ("replay_images", "replay_contexts"):  # the saved buffer's size, before the strict copy
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def discriminator_loss(
    disc: ContextPatchDiscriminator, real: Tensor, fake: Tensor, context: Tensor, generator: torch.Generator
) -> Tensor:
    """The discriminator's regression loss on one batch; pushes ``fake`` into its replay buffer first.

    Args:
        real, fake: (B, C_im, H, W) in [-1, 1] (fake detached here).
        context: (B, C_ctx, h, w), the latents both were decoded from.
        generator: the batch's generator (``StepContext.generator``): coin flips, buffer slots and picks.

    Returns:
        MSE of the scores to +1 (fake) / -1 (real), float32, 0-dim. Each sample is real or fake by a coin
        flip; the fakes are the first half of the batch fresh and the rest from the buffer.
    """
    fake, context = fake.detach(), context.detach()
    disc.push(fake, context, generator)
    n = len(fake) // 2
    old, old_context = disc.replayed(len(fake) - n, fake.dtype, generator)
    fakes, fake_contexts = torch.cat([fake[:n], old]), torch.cat([context[:n], old_context.to(context.dtype)])
    is_fake = (torch.rand(len(real), 1, 1, 1, generator=generator, device=generator.device) < 0.5).to(real.device)
    scores = disc(torch.where(is_fake, fakes, real), torch.where(is_fake, fake_contexts, context))
    return F.mse_loss(scores.float(), is_fake.float().mul(2).sub(1).expand(scores.shape))


def correction(disc: ContextPatchDiscriminator, real: Tensor, fake: Tensor, context: Tensor) -> Tensor:
    """How the generator should move ``fake``: (B, C_im, H, W), unit standard deviation over the whole batch.

    The negative gradient, with respect to the fake, of each sample's mean squared distance between the
    discriminator's scores of the real and of the fake image (the discriminator in eval mode, frozen). The
    reference works on images in [0, 1]; the gradient is taken there too, so its targets are the reference's.
    """
    was_training = disc.training
    disc.eval()
    try:
        with torch.no_grad():
            ref = disc(real, context)
        moved = fake.detach().add(1).div(2).requires_grad_(True)  # [0, 1], the reference's space
        per_sample = F.mse_loss(disc(moved.mul(2).sub(1), context).float(), ref.float(), reduction="none")
        (grad,) = torch.autograd.grad(per_sample.mean((1, 2, 3)).sum(), moved)
    finally:
        disc.train(was_training)
    step = grad.neg().float()
    return step / (step.std(correction=0) + 1e-5)


def generator_loss(fake: Tensor, correction_step: Tensor) -> Tensor:
    """MSE between ``fake`` (B, C_im, H, W) in [-1, 1] and its corrected self, in [0, 1] units (the reference's):
    the gradient moves the fake along the correction."""
    unit = fake.add(1).div(2)
    return F.mse_loss(unit.float(), (unit.detach().float() + correction_step))
