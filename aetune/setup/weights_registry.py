"""Every pretrained weight the pipeline can use: where it comes from, how to check it, where it lands.

Sizes and hashes are given only where they were verified against several public records; ``None``
means unknown (step 2 then records the hash of the first download). Torch hub file names embed the
first hex digits of the file's sha256 (``vgg16-397923af.pth``), so their full hashes can be cross-checked
against the name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aetune.config import Config, family_schema

MODELS = "models"
"""Lands in the models folder (default ``<work_dir>/models``); loaders find it through the manifest."""
TORCH_HUB = "torch_hub"
"""Also linked into ``$TORCH_HOME/hub/checkpoints``, where torchvision, lpips and pytorch-fid look."""


@dataclass(frozen=True)
class WeightSpec:
    """One weight file. Exactly one of ``repo_id`` (Hugging Face) and ``url`` is set."""

    name: str  # registry key: --only NAME, resolve_weight(work_dir, NAME)
    filename: str  # file name on disk and in a bundle; unique across the registry
    description: str
    licence: str
    approx_gb: float  # for disk planning and --list when the exact size is unknown
    repo_id: str | None = None
    repo_file: str | None = None  # path inside the Hugging Face repo
    revision: str | None = None  # branch or commit; "main" where no commit was verified
    url: str | None = None
    bytes: int | None = None  # exact size, None = unknown
    sha256: str | None = None  # full hex digest, None = unknown (recorded on first download)
    target: str = MODELS
    patterns: tuple[str, ...] = ()  # more relative-path globs that identify the file in --weights_dir
    default: bool = True  # fetched by a plain step 2; others only with --only NAME
    timm_name: str | None = None  # the timm model these are the weights of (a frozen teacher found by its name)
    part_of: str | None = None  # the family whose released model this file holds (whole or a part): step 4's
    # default start loads all of a family's parts together (registry order)
    folder_arg: str | None = None  # the ``model.args`` key naming the folder that holds this file (a model built
    # from several files): step 4 sets it to step 2's folder when it is unset

    @property
    def source(self) -> str:
        """``hf://repo/file`` or the URL: what the manifest records as the origin."""
        return f"hf://{self.repo_id}/{self.repo_file}" if self.repo_id else str(self.url)


def hf_patterns(repo_name: str, repo_file: str) -> tuple[str, ...]:
    """Globs finding ``repo_file`` of a Hugging Face repo in an attached folder: plain, or a copied HF cache."""
    return f"*{repo_name}*/{repo_file}", f"*{repo_name}*/snapshots/*/{repo_file}"


REGISTRY: list[WeightSpec] = [
    WeightSpec(
        name="lpips_vgg16",
        filename="vgg16-397923af.pth",
        description="torchvision VGG16 ImageNet weights: the LPIPS-VGG backbone (the linear layers ship in lpips)",
        licence="BSD-3-Clause (torchvision); VGG weights CC BY 4.0 (Oxford VGG)",
        approx_gb=0.553,
        url="https://download.pytorch.org/models/vgg16-397923af.pth",
        bytes=553_433_881,
        sha256="397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
        target=TORCH_HUB,
    ),
    WeightSpec(
        name="lpips_alex",
        filename="alexnet-owt-7be5be79.pth",
        description="torchvision AlexNet ImageNet weights: the LPIPS-Alex backbone (optional metric variant)",
        licence="BSD-3-Clause (torchvision)",
        approx_gb=0.244,
        url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        bytes=244_408_911,
        sha256="7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02",
        target=TORCH_HUB,
        default=False,
    ),
    WeightSpec(
        name="fid_inception",
        filename="pt_inception-2015-12-05-6726825d.pth",
        description="pytorch-fid's port of the TF Inception v3 used by every published FID: rFID in step 5",
        licence="Apache-2.0 (pytorch-fid; TensorFlow Inception weights)",
        approx_gb=0.0956,
        url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
        bytes=95_628_359,
        sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
        target=TORCH_HUB,
    ),
]
"""Every weight a step may fetch: the shared ones here, each family's appended by its ``weights.py``
(:func:`register_weights`) when ``aetune`` is imported."""


def register_weights(*specs: WeightSpec) -> None:
    """Append a family's weight files to :data:`REGISTRY` (re-registering the same spec is a no-op).

    Raises:
        ValueError: a name or file name another spec already uses.
    """
    for spec in specs:
        if spec in REGISTRY:
            continue
        clash = [s.name for s in REGISTRY if s.name == spec.name or s.filename == spec.filename]
        if clash:
            raise ValueError(f"weight {spec.name} ({spec.filename}) clashes with the registered {clash[0]}")
        REGISTRY.append(spec)


def teacher_weight(timm_name: str) -> str | None:
    """The registry entry holding the weights of the timm model ``timm_name`` (a frozen teacher), or None."""
    return next((s.name for s in REGISTRY if s.timm_name == timm_name), None)


def section_weight(cfg: Config, section: Any) -> str | None:
    """The registry entry a config section loads from its own ``weights_path``, when it is pretrained and that is unset.

    The section's own answer (a ``step2_weight(cfg)`` method: e.g. the encoder ``model.args`` chose), else the
    entry holding the timm model it names (a frozen teacher's ``name``); None when it loads no step 2 file.
    """
    if not getattr(section, "pretrained", False) or getattr(section, "weights_path", "") is not None:
        return None
    own = getattr(section, "step2_weight", None)
    if own is not None:
        return own(cfg)
    name = getattr(section, "name", None)
    return teacher_weight(name) if isinstance(name, str) else None


def start_files(family: str) -> list[str]:
    """The registry names of the released model a fine-tune of ``family`` starts from, loaded together: the files
    registered as its parts (``WeightSpec.part_of``), else the first of its schema's ``released``."""
    parts = [s.name for s in REGISTRY if s.part_of == family]
    return parts or list(family_schema(family).released[:1])


def weights_for_config(cfg: Config) -> list[str]:
    """Registry names a run with ``cfg`` needs (``step2 --config``): none for the random-weight demo.

    What the family's model is built from (``needs`` in its schema: hypir's frozen SD2.1-base parts). A
    pretrained section (a teacher, a frozen encoder) means a real fine-tune: the family's released model
    (``released`` in its schema, e.g. the VA-VAE and its latent statistics, and the files registered as its
    parts) and the weights each pretrained section loads (:func:`section_weight`). A pretrained LPIPS means
    trustworthy quality metrics: LPIPS-VGG for the loss and the report, and the FID Inception for step 5's rFID.
    """
    schema = family_schema(cfg.model.family)
    names = list(schema.needs(cfg)) if schema.needs is not None else []
    if any(getattr(s, "pretrained", False) for s in cfg.sections.values()):
        names += [*schema.released, *start_files(cfg.model.family)]
    names += [w for s in cfg.sections.values() if (w := section_weight(cfg, s)) is not None]
    if getattr(cfg.loss, "lpips_pretrained", False):
        names += ["lpips_vgg16", "fid_inception"]
    return list(dict.fromkeys(names))
