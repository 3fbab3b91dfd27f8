"""The weight files of the vavae family that step 2 can fetch (torch-free: registered when ``aetune`` is imported)."""

from aetune.setup.weights_registry import WeightSpec, hf_patterns, register_weights

register_weights(
    WeightSpec(
        name="vavae",
        filename="vavae-imagenet256-f16d32-dinov2.pt",
        description="VA-VAE f16d32 (LightningDiT tokenizer, DINOv2-aligned): the autoencoder we fine-tune",
        licence="MIT per the LightningDiT repository (not verified on the model card)",
        approx_gb=2.15,
        repo_id="hustvl/vavae-imagenet256-f16d32-dinov2",
        repo_file="vavae-imagenet256-f16d32-dinov2.pt",
        revision="main",
    ),
    WeightSpec(
        name="vavae_latents_stats",
        filename="vavae-imagenet256-f16d32-dinov2.latents_stats.pt",
        description="channel mean/std of the released VA-VAE latents on ImageNet (LightningDiT's DiT input)",
        licence="MIT per the LightningDiT repository (not verified on the model card)",
        approx_gb=0.0001,
        repo_id="hustvl/vavae-imagenet256-f16d32-dinov2",
        repo_file="latents_stats.pt",
        revision="main",
        patterns=hf_patterns("vavae-imagenet256-f16d32-dinov2", "latents_stats.pt"),
    ),
    WeightSpec(
        name="dinov2_vitl14",
        timm_name="vit_large_patch14_dinov2.lvd142m",
        filename="vit_large_patch14_dinov2.lvd142m.safetensors",
        description="DINOv2 ViT-L/14 (timm vit_large_patch14_dinov2.lvd142m): the frozen alignment teacher",
        licence="Apache-2.0 (DINOv2)",
        approx_gb=1.22,
        repo_id="timm/vit_large_patch14_dinov2.lvd142m",
        repo_file="model.safetensors",
        revision="main",
        patterns=hf_patterns("vit_large_patch14_dinov2.lvd142m", "model.safetensors"),
    ),
)
