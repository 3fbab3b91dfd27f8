"""The weight files of the kl3d family that step 2 can fetch (torch-free: registered when ``aetune`` is imported)."""

from aetune.setup.weights_registry import TORCH_HUB, WeightSpec, register_weights

register_weights(
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
)
