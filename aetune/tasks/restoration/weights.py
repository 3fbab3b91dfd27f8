"""The CLIP ConvNeXt-XXLarge file of the restoration task's discriminator (torch-free: registered when ``aetune`` is
imported; step 2 fetches it with ``--only clip_convnext_xxlarge``, or ``--config restoration``)."""

from aetune.setup.weights_registry import WeightSpec, hf_patterns, register_weights

CLIP_MODEL = "convnext_xxlarge"
"""The open_clip model of the fork's ``ImageOpenCLIPConvNext`` (``HYPIR/model/backbone.py``)."""
CLIP_WEIGHT = "clip_convnext_xxlarge"
"""Its step 2 entry: open_clip's ``laion2b_s34b_b82k_augreg_soup`` tag, the fork's ``pretrained``."""
CLIP_REPO = "laion/CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg-soup"
CLIP_FILE = "open_clip_pytorch_model.bin"

register_weights(
    WeightSpec(
        name=CLIP_WEIGHT,
        filename="clip-convnext_xxlarge-laion2b-s34b-b82k-augreg-soup.open_clip_pytorch_model.bin",
        description="LAION CLIP ConvNeXt-XXLarge (open_clip): the frozen trunk of the restoration task's "
        "discriminator (discriminator.kind clip_convnext)",
        licence="MIT (laion/CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg-soup model card)",
        # Unverified offline: 1.2 B parameters (846.5 M visual + 354.0 M text, counted with open_clip 3.3.0) as
        # float32. Size and sha256 are unknown (None): step 2 records the hash of the first download.
        approx_gb=4.8,
        repo_id=CLIP_REPO,
        repo_file=CLIP_FILE,
        revision="main",
        patterns=hf_patterns(CLIP_REPO.split("/")[1], CLIP_FILE),
        default=False,
    )
)
