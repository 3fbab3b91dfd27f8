"""The weight files of the rae family that step 2 can fetch (torch-free: registered when ``aetune`` is imported)."""

from aetune.setup.weights_registry import WeightSpec, hf_patterns, register_weights

DEFAULT_ENCODER = "dinov2-reg-b"
"""The released RAE's encoder (``model.args.encoder``)."""
ENCODER_WEIGHTS = {
    "dinov2-reg-b": "rae_encoder_dinov2_reg_b",
    "siglip2-b16-256": "rae_encoder_siglip2_b16_256",
    "mae-b16": "rae_encoder_mae_b16",
}
"""Encoder (``model.args.encoder``) -> its step 2 entry (``encoder.weights_path`` is set from it)."""
DISCRIMINATOR_WEIGHT = "rae_disc_dino_vits8"
"""The step 2 entry of the DINO discriminator's backbone (``discriminator.weights_path``)."""

register_weights(
    WeightSpec(
        name="rae_decoder_dinov2_xl",
        filename="rae-dinov2-wreg-base-vitxl-n08-decoder.pt",
        description="RAE ViT-XL decoder for DINOv2-reg-B tokens, noise tau 0.8 (the reference's model.pt): "
        "--family rae start weights",
        licence="see the nyu-visionx/RAE-collections model card (not verified here)",
        approx_gb=1.66,  # 415 M float32 parameters
        repo_id="nyu-visionx/RAE-collections",
        repo_file="decoders/dinov2/wReg_base/ViTXL_n08/model.pt",
        revision="main",
        patterns=hf_patterns("RAE-collections", "decoders/dinov2/wReg_base/ViTXL_n08/model.pt"),
        default=False,
        part_of="rae",  # the default start (its encoder comes from encoder.weights_path)
    ),
    WeightSpec(
        name="rae_diffusers_dinov2_xl",
        filename="rae-dinov2-wreg-base-vitxl-n08.diffusers.safetensors",
        description="RAE DINOv2-reg-B + ViT-XL decoder in diffusers' AutoencoderRAE layout (encoder included): "
        "an alternative --family rae source",
        licence="see the nyu-visionx/RAE-dinov2-wReg-base-ViTXL-n08 model card (not verified here)",
        approx_gb=2.0,
        repo_id="nyu-visionx/RAE-dinov2-wReg-base-ViTXL-n08",
        repo_file="diffusion_pytorch_model.safetensors",
        revision="main",
        patterns=hf_patterns("RAE-dinov2-wReg-base-ViTXL-n08", "diffusion_pytorch_model.safetensors"),
        default=False,
    ),
    WeightSpec(
        name="rae_encoder_dinov2_reg_b",
        filename="dinov2-with-registers-base.safetensors",
        description="DINOv2-B/14 with 4 registers (transformers): the frozen encoder of --family rae (default)",
        licence="Apache-2.0 (DINOv2)",
        approx_gb=0.35,
        repo_id="facebook/dinov2-with-registers-base",
        repo_file="model.safetensors",
        revision="main",
        patterns=hf_patterns("dinov2-with-registers-base", "model.safetensors"),
        default=False,
    ),
    WeightSpec(
        name="rae_encoder_siglip2_b16_256",
        filename="siglip2-base-patch16-256.safetensors",
        description="SigLIP2-B/16 at 256 px (vision and text towers; RAE uses the vision tower): "
        "--family rae encoder siglip2-b16-256",
        licence="Apache-2.0 (SigLIP2 model card)",
        approx_gb=1.5,
        repo_id="google/siglip2-base-patch16-256",
        repo_file="model.safetensors",
        revision="main",
        patterns=hf_patterns("siglip2-base-patch16-256", "model.safetensors"),
        default=False,
    ),
    WeightSpec(
        name="rae_encoder_mae_b16",
        filename="vit-mae-base.pytorch_model.bin",
        description="MAE ViT-B/16 (transformers ViTMAEForPreTraining; RAE uses its encoder): "
        "--family rae encoder mae-b16",
        licence="Apache-2.0 per the facebook/vit-mae-base model card (MAE code: CC BY-NC 4.0)",
        approx_gb=0.45,
        repo_id="facebook/vit-mae-base",
        repo_file="pytorch_model.bin",
        revision="main",
        patterns=hf_patterns("vit-mae-base", "pytorch_model.bin"),
        default=False,
    ),
    WeightSpec(
        name="rae_disc_dino_vits8",
        filename="vit_small_patch8_224.dino.safetensors",
        description="DINO ViT-S/8 (timm vit_small_patch8_224.dino): the frozen backbone of the RAE discriminator",
        licence="Apache-2.0 (DINO)",
        approx_gb=0.087,
        repo_id="timm/vit_small_patch8_224.dino",
        repo_file="model.safetensors",
        revision="main",
        patterns=hf_patterns("vit_small_patch8_224.dino", "model.safetensors"),
        default=False,
    ),
)
