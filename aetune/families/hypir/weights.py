"""The SD2.1-base files the hypir family builds its frozen parts from (torch-free: registered when ``aetune`` is
imported; step 2 fetches them with ``--only``, or ``--config hypir``)."""

from aetune.setup.weights_registry import WeightSpec, hf_patterns, register_weights

SD2_REPO = "stabilityai/stable-diffusion-2-1-base"
SD2_LICENCE = "CreativeML Open RAIL++-M (stabilityai/stable-diffusion-2-1-base model card)"
SD2_FILES = {
    "unet": "unet/diffusion_pytorch_model.safetensors",
    "vae": "vae/diffusion_pytorch_model.safetensors",
    "text_encoder": "text_encoder/model.safetensors",
}
"""Part -> its weights in the Hub repo (the subfolders HYPIR's ``from_pretrained(..., subfolder=...)`` reads)."""


def sd2_weight_name(part: str) -> str:
    """The step 2 entry of an SD2.1-base part: ``sd21_base_unet``, ``sd21_base_vae``, ``sd21_base_text_encoder``."""
    return f"sd21_base_{part}"


def sd2_filename(part: str) -> str:
    """The part's flat file name in step 2's models folder and in a ``--bundle`` (unique in the registry)."""
    return f"sd21-base.{part}.safetensors"


_SIZES_GB = {"unet": 3.46, "vae": 0.335, "text_encoder": 1.36}  # float32 files of the Hub repo (865 M, 84 M, 340 M)
register_weights(
    *(
        WeightSpec(
            name=sd2_weight_name(part),
            filename=sd2_filename(part),
            description=f"Stable Diffusion 2.1-base {part} (diffusers layout): the frozen {part} of --family hypir",
            licence=SD2_LICENCE,
            approx_gb=_SIZES_GB[part],
            repo_id=SD2_REPO,
            repo_file=repo_file,
            revision="main",
            patterns=hf_patterns("stable-diffusion-2-1-base", repo_file),
            default=False,
            folder_arg="sd2_dir",  # step 4 sets model.args.sd2_dir to step 2's folder of the three
        )
        for part, repo_file in SD2_FILES.items()
    )
)
