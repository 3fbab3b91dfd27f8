"""Terms of the tiny-autoencoder objective (TAESD / TAEHV distillation), as pure functions, float32 means."""

from __future__ import annotations

from torch import Tensor


def pixel_loss(x: Tensor, y: Tensor, kind: str = "l1") -> Tensor:
    """Mean per-element ``|x - y|`` (``l1``) or ``(x - y)^2`` (``l2``) of equal-shape tensors, float32."""
    d = x.float() - y.float()
    if kind == "l1":
        return d.abs().mean()
    if kind == "l2":
        return d.pow(2).mean()
    raise ValueError(f"unknown reconstruction kind '{kind}': use l1 or l2")


def latent_distill_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean squared error of the student's latents to the teacher's (scaled) latents, float32.

    Raises:
        ValueError: the shapes differ (a student built for another latent width or downsampling factor).
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"student latents {tuple(student.shape)} and teacher latents {tuple(teacher.shape)} differ: build the "
            "tiny model with the teacher's latent channels and downsampling factor"
        )
    return pixel_loss(student, teacher, "l2")
