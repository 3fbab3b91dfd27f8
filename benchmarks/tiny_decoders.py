"""Decoding throughput of the tiny autoencoders against the big decoders they stand in for, in one run.

    python -m benchmarks.tiny_decoders [--device cuda] [--image_size 256] [--batch 8] [--frames 12]

Rows (random weights: speed does not depend on them): the ``taesd`` decoder (f16, 32 channels, as
``configs/taesd.yaml``) against the VA-VAE decoder (f16d32, its teacher), images/s; and the ``taehv``
decoder (f8, 16 channels) in frames/s, parallel and streaming, against the ``kl`` f8 decoder run frame by
frame (no video VAE is a registered family). fp32 on CPU, fp16 autocast on CUDA.
"""

from __future__ import annotations

import argparse
import contextlib

import torch

from aetune.families.tiny.export import decode_throughput
from aetune.models import create_autoencoder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--image_size", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=12, help="frames per clip for taehv")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    device, s, b = torch.device(args.device), args.image_size, args.batch
    amp = torch.autocast("cuda", torch.float16) if device.type == "cuda" else contextlib.nullcontext()
    g = torch.Generator().manual_seed(0)

    def row(name: str, model: torch.nn.Module, z: torch.Tensor, per: int, unit: str, **kw: object) -> float:
        model = model.eval().to(device)
        z = z.to(device)
        with amp:
            rate = decode_throughput(lambda v: model.decode(v, **kw).sample, z, args.repeats) * per
        params = sum(q.numel() for q in model.decoder.parameters()) / 1e6
        print(f"{name:<34} {rate:>10.1f} {unit}/s   decoder {params:6.2f} M parameters")
        return rate

    print(f"device {device}, {s} px, batch {b}" + (", fp16 autocast" if device.type == "cuda" else ", fp32"))
    z16 = torch.randn(b, 32, s // 16, s // 16, generator=g)
    tiny = row("taesd f16c32 decoder", create_autoencoder("taesd", latent_channels=32, downsample_factor=16), z16, 1,
               "images")  # fmt: skip
    big = row("vavae f16d32 decoder (teacher)", create_autoencoder("vavae"), z16, 1, "images")
    print(f"{'speed-up':<34} {tiny / big:>10.1f} x")
    n = -(-args.frames // 4)
    zv = torch.randn(max(1, b // 4), n, 16, s // 8, s // 8, generator=g)
    out = 4 * n - 3  # frames per clip that come back
    vid = create_autoencoder("taehv")
    fast = row("taehv decoder (parallel)", vid, zv, out, "frames")
    row("taehv decoder (streaming)", vid, zv, out, "frames", parallel=False)
    kl = create_autoencoder("kl", ch_mult=[1, 2, 4, 4], embed_dim=16)
    per_frame = row("kl f8 decoder, frame by frame", kl, torch.randn(b, 16, s // 8, s // 8, generator=g), 1, "frames")
    print(f"{'speed-up (parallel)':<34} {fast / per_frame:>10.1f} x")


if __name__ == "__main__":
    main()
