"""The weight files of the tiny family that step 2 can fetch (torch-free: registered when ``aetune`` is imported)."""

from aetune.setup.weights_registry import WeightSpec, register_weights

register_weights(
    WeightSpec(
        name="taesd_encoder",
        filename="taesd_encoder.pth",
        description="TAESD encoder (SD 1.x/2.x latents, f8, 4 channels): --family taesd start weights, "
        "with taesd_decoder (aetune.families.tiny.loading)",
        licence="MIT (madebyollin/taesd)",
        approx_gb=0.0049,  # 1.22 M float32 parameters
        url="https://github.com/madebyollin/taesd/raw/main/taesd_encoder.pth",
        default=False,
        part_of="taesd",
    ),
    WeightSpec(
        name="taesd_decoder",
        filename="taesd_decoder.pth",
        description="TAESD decoder (SD 1.x/2.x latents, f8, 4 channels): a released tiny decoder to start from",
        licence="MIT (madebyollin/taesd)",
        approx_gb=0.0049,  # 1.22 M float32 parameters
        url="https://github.com/madebyollin/taesd/raw/main/taesd_decoder.pth",
        default=False,
        part_of="taesd",
    ),
    WeightSpec(
        name="taehv",
        filename="taehv.pth",
        description="TAEHV (HunyuanVideo latents, f8, 16 channels, time x4): --family taehv start weights",
        licence="MIT, as madebyollin/taesd (taehv's LICENSE file not verified here)",
        approx_gb=0.0227,  # 11.3 M parameters in float16
        url="https://github.com/madebyollin/taehv/raw/main/taehv.pth",
        default=False,
        part_of="taehv",
    ),
)
