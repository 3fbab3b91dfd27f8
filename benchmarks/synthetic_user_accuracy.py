"""How separable are the synthetic users? A linear probe on tiny grey images, against chance.

Generates the synthetic micro-Doppler set (full 31 x 150 and a small 8 x 30, 64 px), shrinks each PNG
to 32 x 32 grey, and fits a logistic regression on a split stratified by user (every user in both
parts). The users should be separable well above chance and well below 100 %: a set where pixels give
the user away is useless for studying user information in latents, a set at chance carries none.
Optionally also draws the docs figure (a grid of users x images).

    python benchmarks/synthetic_user_accuracy.py --workers 2 --figure docs/synthetic_users.png
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from aetune.data.synthetic import draw_user, generate_microdoppler_dataset, render_image
from aetune.data.synthetic.generate import image_path
from aetune.io import atomic_path

SETS = {"full": (31, 150), "small": (8, 30)}  # name -> (users, images per user)
PROBE_SIDE = 32  # pixels per side of the grey images the classifier sees


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="+", choices=sorted(SETS), default=["full", "small"])
    p.add_argument("--image_size", type=int, default=64, help="size of the generated PNGs")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out_dir", type=Path, default=None, help="keep the datasets here (default: temp)")
    p.add_argument("--figure", type=Path, default=None, help="also write the users x images grid here")
    return p.parse_args()


def load_probe_features(root: Path, num_users: int, images_per_user: int) -> tuple[np.ndarray, np.ndarray]:
    """(num_users * images_per_user, 32 * 32) grey pixels in [0, 1] and their 0-based user labels."""
    features, labels = [], []
    for user_id in range(1, num_users + 1):
        for i in range(images_per_user):
            with Image.open(image_path(root, user_id, i)) as im:
                grey = im.convert("L").resize((PROBE_SIDE, PROBE_SIDE), Image.Resampling.BILINEAR)
            features.append(np.asarray(grey, dtype=np.float32).ravel() / 255)
            labels.append(user_id - 1)
    return np.stack(features), np.array(labels)


def user_accuracy(features: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """Test accuracy of a standardised logistic regression on a 70/30 split stratified by user."""
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=0.3, stratify=labels, random_state=seed
    )
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    probe.fit(x_train, y_train)
    return float(probe.score(x_test, y_test))


def save_figure(path: Path, seed: int, users: int = 4, images: int = 3, size: int = 128, dpi: int = 72) -> None:
    """A users x images grid of dataset images with user labels, quantised to 32 colours (< 40 KB)."""
    fig, axes = plt.subplots(users, images, figsize=(1.6 * images, 1.6 * users), dpi=dpi)
    for row in range(users):
        user = draw_user(row + 1, seed)
        for col in range(images):
            ax = axes[row, col]
            ax.imshow(render_image(user, col, size, seed))
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(f"ID_{user.user_id}\n{user.height_m:.2f} m, {user.speed_mps:.2f} m/s", fontsize=8)
            if row == 0:
                ax.set_title(f"img_{col:04d}", fontsize=8)
    fig.suptitle("synthetic walking micro-Doppler (3 s, +-6 m/s, 0 m/s mid)", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    # Jet speckle compresses poorly as RGB; a 32-colour palette keeps the look at a third of the bytes.
    with atomic_path(path) as tmp, Image.open(buffer) as rendered:
        palette = rendered.convert("RGB").quantize(colors=32, dither=Image.Dither.NONE)
        palette.save(tmp, format="PNG", optimize=True)


def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        base = args.out_dir or Path(tmp)
        for name in args.sets:
            num_users, per_user = SETS[name]
            root = base / f"{name}_{args.image_size}px"
            start = time.perf_counter()
            generate_microdoppler_dataset(root, num_users, per_user, args.image_size, args.seed, workers=args.workers)
            seconds = time.perf_counter() - start
            features, labels = load_probe_features(root, num_users, per_user)
            accuracy = user_accuracy(features, labels, args.seed)
            print(
                f"{name}: {num_users} users x {per_user} images at {args.image_size} px "
                f"(generated in {seconds:.0f} s with {args.workers} worker(s)): "
                f"user accuracy {accuracy:.3f}, chance {1 / num_users:.3f}"
            )
    if args.figure is not None:
        save_figure(args.figure, args.seed)
        print(f"figure: {args.figure} ({args.figure.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
