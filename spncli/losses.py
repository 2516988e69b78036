"""Losses of the restoration GAN: small weighted modules (torch only).

References
----------
.. [1] L. Jiang et al., "Focal frequency loss for image reconstruction and
   synthesis", ICCV 2021 (losses on Fourier spectra).
   :doi:`10.1109/ICCV48922.2021.01366`
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CorrelationLoss", "FrequencyLoss", "RestorationLoss", "adversarial_loss"]


class CorrelationLoss(nn.Module):
    """``1 - ρ`` between prediction and target, per sample, averaged (scale-free)."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = pred.flatten(1) - pred.flatten(1).mean(dim=1, keepdim=True)
        t = target.flatten(1) - target.flatten(1).mean(dim=1, keepdim=True)
        rho = (p * t).sum(1) / (p.norm(dim=1) * t.norm(dim=1) + 1e-8)
        return (1 - rho).mean()


class FrequencyLoss(nn.Module):
    """L1 distance of the Fourier magnitudes [1]_ (the PRNU spectrum is flat; JPEG's is not)."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        fp = torch.fft.rfft2(pred.float(), norm="ortho").abs()
        ft = torch.fft.rfft2(target.float(), norm="ortho").abs()
        return F.l1_loss(fp, ft)


class RestorationLoss(nn.Module):
    """Weighted sum ``w_l1·L1 + w_corr·(1-ρ) + w_freq·frequency`` of the restored residual."""

    def __init__(self, w_l1: float = 1.0, w_corr: float = 1.0, w_freq: float = 0.1):
        super().__init__()
        self.weights = {"l1": w_l1, "corr": w_corr, "freq": w_freq}
        self.terms = nn.ModuleDict({"corr": CorrelationLoss(), "freq": FrequencyLoss()})

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict]:
        parts = {
            "l1": F.l1_loss(pred, target),
            "corr": self.terms["corr"](pred, target),
            "freq": self.terms["freq"](pred, target),
        }
        total = sum(self.weights[k] * v for k, v in parts.items())
        return total, {k: float(v.detach()) for k, v in parts.items()}


def adversarial_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Non-saturating GAN loss on patch logits."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)
