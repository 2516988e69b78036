"""The restoration networks' model cards, read without torch (for reports and listings).

A model card is the JSON file beside a network's weights (``models/NAME.json``): the weights'
SHA-256, the architecture, what it was trained on, how its checkpoint was chosen and how it was
evaluated. Case files record the SHA-256 of the weights a restored residual came from; this module
finds the card of those weights so that a report can name the network, its training data and its
validation (Mitchell et al., "Model cards for model reporting", FAT* 2019,
:doi:`10.1145/3287560.3287596`).
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["MODELS_DIR", "DEFAULT_CARD", "TEXTURED_BLOCK_STD_ABOVE", "find_card", "describe", "policy_text"]

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
"""The shipped cards and weights (``models/`` beside the package)."""

DEFAULT_CARD = MODELS_DIR / "spn-restore-v2.json"
"""The card ``spn restore`` and ``spn match --restore`` use unless ``--model`` names another."""

TEXTURED_BLOCK_STD_ABOVE = 4.0
"""A card's ``postprocess.textured_block_std_above`` where it does not say (grey levels of a block's AC
standard deviation above which the block counts as textured; the value written into new cards)."""


def find_card(weights_sha256: str | None, folder: Path = MODELS_DIR) -> dict | None:
    """The shipped card whose weights have this SHA-256, or None (weights from elsewhere, or no folder)."""
    if not weights_sha256 or not folder.is_dir():
        return None
    for path in sorted(folder.glob("*.json")):
        try:
            card = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(card, dict) and card.get("weights_sha256") == weights_sha256:
            return card
    return None


def policy_text(card: dict) -> str:
    """What a card's ``postprocess`` applies, and when, in words ("not recorded in the card" when absent)."""
    post = card.get("postprocess") if isinstance(card.get("postprocess"), dict) else {}
    parts = []
    if isinstance(post.get("wiener_surviving_at_or_above"), (int, float)):
        parts.append(f"the spectral Wiener filter per image, when at least {post['wiener_surviving_at_or_above']:.2%} "
                     "of the AC luma coefficients survived quantization")  # fmt: skip
    elif isinstance(post.get("wiener_dft_above_quality"), (int, float)):
        parts.append(f"the spectral Wiener filter above quality {post['wiener_dft_above_quality']:g}")
    if isinstance(post.get("network_at_or_below_quality"), (int, float)):
        parts.append(f"the network's correction at or below quality {post['network_at_or_below_quality']:g}")
    least = post.get("network_min_textured_fraction")
    if isinstance(least, (int, float)) and least > 0:
        std_above = post.get("textured_block_std_above", TEXTURED_BLOCK_STD_ABOVE)
        parts.append(f"and only on images with at least {least:.2%} of their 8x8 blocks textured (AC standard "
                     f"deviation above {std_above:g} grey levels); elsewhere the "
                     "compression-aware residual itself (each row says whether the network was applied)")  # fmt: skip
    return "; ".join(parts) if parts else "not recorded in the card"


def describe(card: dict) -> dict[str, str]:
    """The network, its training data, its validation and its post-processing policy, in words (``name``,
    ``network``, ``training``, ``selection``, ``policy``); what a card does not say is "not recorded in the card"."""
    missing = "not recorded in the card"
    training = card.get("training") if isinstance(card.get("training"), dict) else {}
    arch = card.get("architecture")
    arch = arch if isinstance(arch, str) else "v1"
    return {
        "policy": policy_text(card),
        "name": str(card.get("name") or missing),
        "network": f"{arch} generator, {card.get('parameters', '?'):,} parameters; input: "
        f"{card.get('inputs') or missing}; output: {card.get('output') or missing}"
        if isinstance(card.get("parameters"), int)
        else str(card.get("inputs") or missing),
        "training": str(training.get("data") or missing),
        "selection": str(training.get("selection") or missing),
    }
