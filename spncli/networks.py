"""Networks of the sensor-noise restoration GAN (torch only: no I/O, no training logic).

The generator takes three inputs — the compressed image, the classic noise
residual extracted from it, and the compression level (IJG quality and the
luminance quantization table) — and predicts a *correction* to the residual
so that ``W + ΔW`` approaches the true PRNU term ``I·K``. The condition
modulates every stage by FiLM. Every operation is local (no global pooling,
no normalisation over the image): the output at a pixel depends only on a
bounded neighbourhood, so tiled inference reproduces whole-image inference.

The discriminator is a PatchGAN on high-pass noise maps with spectral
normalisation and an auxiliary head that predicts the quality.

References
----------
.. [1] E. Perez et al., "FiLM: Visual reasoning with a general conditioning
   layer", AAAI 2018. :doi:`10.1609/aaai.v32i1.11671`
.. [2] S. Woo et al., "CBAM: Convolutional block attention module", ECCV 2018.
   :doi:`10.1007/978-3-030-01234-2_1`
.. [3] P. Isola et al., "Image-to-image translation with conditional
   adversarial networks", CVPR 2017. :doi:`10.1109/CVPR.2017.632`
.. [4] T. Miyato et al., "Spectral normalization for generative adversarial
   networks", ICLR 2018. arXiv:1802.05957
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ARCHITECTURES",
    "COND_DIM",
    "SURVIVAL_CHANNELS",
    "RestorationNet",
    "RestorationNetV2",
    "NoiseDiscriminator",
    "build_generator",
    "receptive_radius",
]

COND_DIM = 65
"""Condition vector: quality/100 and the 64 luminance-table entries as log(q)/log(255)."""

SURVIVAL_CHANNELS = 2
"""Survival map channels: fraction of non-zero AC luma coefficients per 8x8 block, and its 1/q-weighted form."""


class FiLM(nn.Module):
    """Feature-wise affine modulation ``x·(1 + γ(c)) + β(c)`` [1]_ (identity at init)."""

    def __init__(self, cond_dim: int, channels: int):
        super().__init__()
        self.proj = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.proj(cond)[:, :, None, None].chunk(2, dim=1)
        return x * (1 + gamma) + beta


class LocalAttention(nn.Module):
    """Channel then spatial attention [2]_ over a local window (tiling-exact).

    Args:
        channels: feature channels.
        window: side of the local average that replaces CBAM's global pooling.
        reduction: channel reduction of the attention MLP.
    """

    def __init__(self, channels: int, window: int = 5, reduction: int = 4):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.window = window
        self.channel = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.SiLU(), nn.Conv2d(hidden, channels, 1))
        self.spatial = nn.Conv2d(2, 1, 5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = F.avg_pool2d(x, self.window, stride=1, padding=self.window // 2, count_include_pad=True)
        x = x * torch.sigmoid(self.channel(local))
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


class ResBlock(nn.Module):
    """Two 3x3 convolutions with FiLM and local attention, plus the identity.

    Args:
        channels: feature channels.
        cond_dim: length of the condition vector.
        attention: whether to apply :class:`LocalAttention`.
    """

    def __init__(self, channels: int, cond_dim: int, attention: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.film = FiLM(cond_dim, channels)
        self.attn = LocalAttention(channels) if attention else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv1(x))
        h = self.film(self.conv2(h), cond)
        return x + self.attn(F.silu(h))


class RestorationNet(nn.Module):
    """Quality-conditioned encoder-decoder that corrects a noise residual.

    Input: image (B, 3, H, W) scaled to -0.5..0.5, classic residual (B, 1, H, W)
    divided by ``RESIDUAL_SCALE``, condition (B, COND_DIM). H and W must be
    divisible by 8. Output: the correction ΔW (B, 1, H, W) in residual units
    (zero at initialisation: the network starts as the classic residual).

    Pixel-unshuffle by 2 first keeps the 2x2 colour-filter phase in channels.

    Args:
        width: channels of the first stage (the second and third use 2x).
        cond_dim: length of the condition vector.
    """

    RESIDUAL_SCALE = 4.0
    MULTIPLE = 8

    def __init__(self, width: int = 32, cond_dim: int = COND_DIM):
        super().__init__()
        w1, w2 = width, 2 * width
        self.cond = nn.Sequential(nn.Linear(cond_dim, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU())
        c = 64
        self.stem = nn.Conv2d(4 * 4, w1, 3, padding=1)
        self.enc1 = ResBlock(w1, c, attention=False)
        self.down1 = nn.Conv2d(w1, w2, 2, stride=2)
        self.enc2 = ResBlock(w2, c)
        self.down2 = nn.Conv2d(w2, w2, 2, stride=2)
        self.mid = ResBlock(w2, c)
        self.up2 = nn.ConvTranspose2d(w2, w2, 2, stride=2)
        self.dec2 = ResBlock(w2, c)
        self.up1 = nn.ConvTranspose2d(w2, w1, 2, stride=2)
        self.dec1 = ResBlock(w1, c, attention=False)
        self.head = nn.Conv2d(w1, 4, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward_features(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        c = self.cond(cond)
        s1 = self.enc1(self.stem(x), c)
        s2 = self.enc2(self.down1(s1), c)
        m = self.mid(self.down2(s2), c)
        d2 = self.dec2(self.up2(m) + s2, c)
        return self.dec1(self.up1(d2) + s1, c)

    def forward(self, image: torch.Tensor, residual: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = F.pixel_unshuffle(torch.cat([image, residual], dim=1), 2)
        return F.pixel_shuffle(self.head(self.forward_features(x, cond)), 2)


class RestorationNetV2(RestorationNet):
    """v2: refines the compression-aware residual, told which DCT coefficients survived.

    Inputs: image (B, 3, H, W) scaled to -0.5..0.5 (grey repeated to three
    channels); the compression-aware residual (B, 1, H, W) divided by
    ``RESIDUAL_SCALE``; the survival map (B, SURVIVAL_CHANNELS, H/8, W/8) on
    the input's 8x8 grid (the file's blocks when the input starts on it); the
    condition (B, COND_DIM), which FiLM-modulates every stage of the trunk.
    Output: the correction (B, 1, H, W), zero at initialisation (the network
    starts as the compression-aware residual). H and W must be divisible by 8.

    The survival map enters the trunk twice, embedded by 1x1 convolutions and
    added: at 1/8 resolution (the bottleneck, one cell per block) and, repeated
    4x, at the 1/2-resolution stem, so the fine stages see the block grid.
    Every operation is local, so tiled inference equals whole-image inference.
    """

    def __init__(self, width: int = 32, cond_dim: int = COND_DIM, survival_channels: int = SURVIVAL_CHANNELS):
        super().__init__(width, cond_dim)
        self.survival_channels = survival_channels
        self.surv_fine = nn.Conv2d(survival_channels, width, 1)
        self.surv_coarse = nn.Conv2d(survival_channels, 2 * width, 1)

    def forward_features_v2(self, x: torch.Tensor, survival: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        c = self.cond(cond)
        fine = F.interpolate(self.surv_fine(survival), scale_factor=4, mode="nearest")
        s1 = self.enc1(self.stem(x) + fine, c)
        s2 = self.enc2(self.down1(s1), c)
        m = self.mid(self.down2(s2) + self.surv_coarse(survival), c)
        d2 = self.dec2(self.up2(m) + s2, c)
        return self.dec1(self.up1(d2) + s1, c)

    def forward(
        self, image: torch.Tensor, residual: torch.Tensor, survival: torch.Tensor, cond: torch.Tensor
    ) -> torch.Tensor:
        rows, cols = residual.shape[-2:]
        if survival.shape[-2:] != (rows // 8, cols // 8):
            raise ValueError(f"survival map {tuple(survival.shape[-2:])} is not 1/8 of the residual {(rows, cols)}")
        x = F.pixel_unshuffle(torch.cat([image, residual], dim=1), 2)
        return F.pixel_shuffle(self.head(self.forward_features_v2(x, survival, cond)), 2)


ARCHITECTURES = {"v1": RestorationNet, "v2": RestorationNetV2}
"""Generator architectures by the name a model card records."""


def build_generator(architecture: str = "v1", **kwargs) -> RestorationNet:
    """A generator by architecture name (:data:`ARCHITECTURES`) and its arguments."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture {architecture!r} is not one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[architecture](**kwargs)


class NoiseDiscriminator(nn.Module):
    """PatchGAN [3]_ on high-pass noise maps, spectrally normalised [4]_, with a quality head.

    Args:
        width: channels of the first layer.
    """

    def __init__(self, width: int = 32):
        super().__init__()
        sn = nn.utils.spectral_norm
        hp = torch.tensor([[-1.0, 2.0, -1.0], [2.0, -4.0, 2.0], [-1.0, 2.0, -1.0]]) / 4.0
        self.register_buffer("highpass", hp.view(1, 1, 3, 3))
        self.body = nn.Sequential(
            sn(nn.Conv2d(2, width, 4, stride=2, padding=1)),
            nn.LeakyReLU(0.2),
            sn(nn.Conv2d(width, 2 * width, 4, stride=2, padding=1)),
            nn.LeakyReLU(0.2),
            sn(nn.Conv2d(2 * width, 2 * width, 3, padding=1)),
            nn.LeakyReLU(0.2),
        )
        self.patch = sn(nn.Conv2d(2 * width, 1, 3, padding=1))
        self.quality = nn.Linear(2 * width, 1)

    def forward(self, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch logits (B, 1, H/4, W/4) and predicted quality/100 (B,)."""
        x = torch.cat([noise, F.conv2d(noise, self.highpass, padding=1)], dim=1)
        h = self.body(x)
        return self.patch(h), self.quality(h.mean(dim=(2, 3))).squeeze(1)


def receptive_radius(model: RestorationNet, size: int = 192) -> int:
    """Measured radius (pixels) of the generator's receptive field.

    A unit impulse in the residual at the centre of a zero input; the largest
    distance at which the output's gradient is non-zero.
    """
    model = model.eval()
    image = torch.zeros(1, 3, size, size)
    res = torch.zeros(1, 1, size, size, requires_grad=True)
    cond = torch.zeros(1, COND_DIM)
    with torch.enable_grad():
        if isinstance(model, RestorationNetV2):
            out = model(image, res, torch.zeros(1, model.survival_channels, size // 8, size // 8), cond)
        else:
            out = model(image, res, cond)
        out[0, 0, size // 2, size // 2].backward()
    nz = res.grad[0, 0].abs() > 0
    if not nz.any():  # zero-initialised head: perturb it to see the support
        return size // 2
    rows, cols = torch.nonzero(nz, as_tuple=True)
    return int(max((rows - size // 2).abs().max(), (cols - size // 2).abs().max()))
