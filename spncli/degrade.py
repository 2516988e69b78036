"""Re-compression of evidence images: the degradations restoration must undo.

A camera JPEG re-compressed at a lower quality is doubly compressed, the
realistic case for images that passed through messaging apps and social
networks. Pixels are decoded in sensor orientation and encoded again with
libjpeg (through OpenCV) at an IJG quality and chroma subsampling, or as
WebP.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["SUBSAMPLING", "CODECS", "DegradeSettings", "encode", "output_name"]

SUBSAMPLING = {
    "444": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444,
    "422": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422,
    "420": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
}
CODECS = ("jpeg", "webp")


@dataclass(frozen=True)
class DegradeSettings:
    """One degradation: codec, quality 1-100 and (JPEG) chroma subsampling."""

    quality: int
    codec: str = "jpeg"
    subsampling: str = "420"

    def __post_init__(self):
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be in 1..100, got {self.quality}")
        if self.codec not in CODECS:
            raise ValueError(f"codec {self.codec!r} is not one of {', '.join(CODECS)}")
        if self.subsampling not in SUBSAMPLING:
            raise ValueError(f"subsampling {self.subsampling!r} is not one of {', '.join(SUBSAMPLING)}")

    @property
    def suffix(self) -> str:
        """File-name tag, e.g. ``q70.420.jpg`` or ``q70.webp``."""
        if self.codec == "webp":
            return f"q{self.quality}.webp"
        return f"q{self.quality}.{self.subsampling}.jpg"

    def as_dict(self) -> dict:
        return {
            "codec": self.codec,
            "quality": self.quality,
            "subsampling": self.subsampling if self.codec == "jpeg" else None,
        }


def encode(pixels: np.ndarray, settings: DegradeSettings) -> bytes:
    """Encode an image (float32 0..255, RGB or grey, (M, N, C)) with ``settings``."""
    img = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    if img.shape[2] == 3:
        img = np.ascontiguousarray(img[:, :, ::-1])  # RGB to OpenCV's BGR
    else:
        img = np.ascontiguousarray(img[:, :, 0])
    if settings.codec == "webp":
        ok, buf = cv2.imencode(".webp", img, [cv2.IMWRITE_WEBP_QUALITY, settings.quality])
    else:
        ok, buf = cv2.imencode(
            ".jpg",
            img,
            [
                cv2.IMWRITE_JPEG_QUALITY,
                settings.quality,
                cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                SUBSAMPLING[settings.subsampling],
            ],
        )
    if not ok:
        raise RuntimeError(f"{settings.codec} encoding failed")
    return buf.tobytes()


def output_name(stem: str, settings: DegradeSettings) -> str:
    """``<stem>.<suffix>`` for the output stem of a source (:func:`spncli.provenance.output_stem`): unique per
    source and settings."""
    return f"{stem}.{settings.suffix}"
