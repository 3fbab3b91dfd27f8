"""Every pretrained weight the pipeline can use: where it comes from, how to check it, where it lands.

Sizes and hashes are given only where they were verified against several public records; ``None``
means unknown (step 2 then records the hash of the first download). Torch hub file names embed the
first hex digits of the file's sha256 (``vgg16-397923af.pth``), so their full hashes can be cross-checked
against the name.
"""

from __future__ import annotations

from dataclasses import dataclass

from aetune.config import Config

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

    @property
    def source(self) -> str:
        """``hf://repo/file`` or the URL: what the manifest records as the origin."""
        return f"hf://{self.repo_id}/{self.repo_file}" if self.repo_id else str(self.url)


def _hf_patterns(repo_name: str, repo_file: str) -> tuple[str, ...]:
    """Globs finding ``repo_file`` of a Hugging Face repo in an attached folder: plain, or a copied HF cache."""
    return f"*{repo_name}*/{repo_file}", f"*{repo_name}*/snapshots/*/{repo_file}"


REGISTRY: tuple[WeightSpec, ...] = (
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
        patterns=_hf_patterns("vavae-imagenet256-f16d32-dinov2", "latents_stats.pt"),
    ),
    WeightSpec(
        name="dinov2_vitl14",
        filename="vit_large_patch14_dinov2.lvd142m.safetensors",
        description="DINOv2 ViT-L/14 (timm vit_large_patch14_dinov2.lvd142m): the frozen alignment teacher",
        licence="Apache-2.0 (DINOv2)",
        approx_gb=1.22,
        repo_id="timm/vit_large_patch14_dinov2.lvd142m",
        repo_file="model.safetensors",
        revision="main",
        patterns=_hf_patterns("vit_large_patch14_dinov2.lvd142m", "model.safetensors"),
    ),
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
    WeightSpec(
        name="lpips_squeeze",
        filename="squeezenet1_1-b8a52dc0.pth",
        description="torchvision SqueezeNet 1.1 ImageNet weights: the trunk of kl3d's fake-3-D perceptual loss "
        "(MONAI PerceptualLoss, LPIPS-squeeze; the linear layers ship in lpips)",
        licence="BSD-3-Clause (torchvision)",
        approx_gb=0.0047,  # torchvision's recorded file size, 4.729 MB
        url="https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",
        target=TORCH_HUB,
        default=False,
    ),
    WeightSpec(
        name="taesd_encoder",
        filename="taesd_encoder.pth",
        description="TAESD encoder (SD 1.x/2.x latents, f8, 4 channels): --family taesd start weights, "
        "with taesd_decoder (aetune.families.tiny.loading)",
        licence="MIT (madebyollin/taesd)",
        approx_gb=0.0049,  # 1.22 M float32 parameters
        url="https://github.com/madebyollin/taesd/raw/main/taesd_encoder.pth",
        default=False,
    ),
    WeightSpec(
        name="taesd_decoder",
        filename="taesd_decoder.pth",
        description="TAESD decoder (SD 1.x/2.x latents, f8, 4 channels): a released tiny decoder to start from",
        licence="MIT (madebyollin/taesd)",
        approx_gb=0.0049,  # 1.22 M float32 parameters
        url="https://github.com/madebyollin/taesd/raw/main/taesd_decoder.pth",
        default=False,
    ),
    WeightSpec(
        name="taehv",
        filename="taehv.pth",
        description="TAEHV (HunyuanVideo latents, f8, 16 channels, time x4): --family taehv start weights",
        licence="MIT, as madebyollin/taesd (taehv's LICENSE file not verified here)",
        approx_gb=0.0227,  # 11.3 M parameters in float16
        url="https://github.com/madebyollin/taehv/raw/main/taehv.pth",
        default=False,
    ),
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
        patterns=_hf_patterns("RAE-collections", "decoders/dinov2/wReg_base/ViTXL_n08/model.pt"),
        default=False,
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
        patterns=_hf_patterns("RAE-dinov2-wReg-base-ViTXL-n08", "diffusion_pytorch_model.safetensors"),
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
        patterns=_hf_patterns("dinov2-with-registers-base", "model.safetensors"),
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
        patterns=_hf_patterns("siglip2-base-patch16-256", "model.safetensors"),
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
        patterns=_hf_patterns("vit-mae-base", "pytorch_model.bin"),
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
        patterns=_hf_patterns("vit_small_patch8_224.dino", "model.safetensors"),
        default=False,
    ),
)

TEACHER_WEIGHTS = {"vit_large_patch14_dinov2.lvd142m": "dinov2_vitl14"}
"""timm teacher name -> registry entry holding its weights."""


def weights_for_config(cfg: Config) -> list[str]:
    """Registry names a run with ``cfg`` needs (``step2 --config``): none for the random-weight demo.

    A pretrained teacher means a real fine-tune: the released VA-VAE (for the ``vavae`` family) and
    its latent statistics. A pretrained LPIPS means trustworthy quality metrics: LPIPS-VGG for the
    loss and the report, and the FID Inception for step 5's rFID.
    """
    names = []
    teacher = cfg.sections.get("teacher")
    if teacher is not None and teacher.pretrained and cfg.model.family == "vavae":
        names += ["vavae", "vavae_latents_stats"]
        if teacher.name in TEACHER_WEIGHTS and teacher.weights_path is None:
            names.append(TEACHER_WEIGHTS[teacher.name])
    if getattr(cfg.loss, "lpips_pretrained", False):
        names += ["lpips_vgg16", "fid_inception"]
    return names
