"""Maximum-likelihood camera fingerprint, accumulated as a stream.

With the residual model ``W = I·K + Ξ``, the maximum-likelihood estimate of
the PRNU factor ``K`` from images ``I_1..I_n`` of one camera is

    K = Σ W_i I_i / Σ I_i²

per colour channel [1]_. Saturated pixels carry no PRNU and are excluded
(weight 0). The estimator needs only two running sums, so memory stays at a
few image-sized arrays however many images are added.

References
----------
.. [1] M. Chen, J. Fridrich, M. Goljan, J. Lukáš, "Determining image origin
   and integrity using sensor noise", IEEE Trans. Inf. Forensics Security
   3(1), 74-90, 2008. :doi:`10.1109/TIFS.2007.916285`
"""

from __future__ import annotations

import numpy as np

from .residual import ResidualParams, denoise_noise, postprocess, rgb_to_grey

__all__ = ["FingerprintAccumulator", "saturation_mask"]


def saturation_mask(channel: np.ndarray, level: float) -> np.ndarray:
    """Boolean mask of clipped pixels: at or above ``level - 0.5`` (0..255 scale)."""
    return channel >= np.float32(level - 0.5)


class FingerprintAccumulator:
    """Running sums of the ML fingerprint estimator.

    Parameters
    ----------
    params : ResidualParams
        Residual settings used for every image and for the post-processing.

    Examples
    --------
    >>> acc = FingerprintAccumulator()
    >>> for pixels in images:            # doctest: +SKIP
    ...     acc.add(pixels)
    >>> k = acc.finalize()               # doctest: +SKIP
    """

    def __init__(self, params: ResidualParams = ResidualParams()):
        self.params = params
        self.count = 0
        self.shape: tuple[int, int, int] | None = None
        self._num: np.ndarray | None = None
        self._den: np.ndarray | None = None
        self.saturated_fraction: list[float] = []

    def check(self, pixels: np.ndarray) -> None:
        """Raise ValueError if ``pixels`` cannot join this fingerprint (size, channels)."""
        if self.shape is not None and pixels.shape != self.shape:
            r, c, ch = self.shape
            raise ValueError(
                f"size {pixels.shape[1]}x{pixels.shape[0]}x{pixels.shape[2]} differs from the fingerprint's "
                f"{c}x{r}x{ch} (cols x rows x channels; "
                "all images of one fingerprint must share size and orientation; see --crop)"
            )

    def add(self, pixels: np.ndarray, saturation: float = 255.0) -> None:
        """Add one image.

        Parameters
        ----------
        pixels : ndarray, float32, shape (M, N, C)
            On the 0..255 scale, in sensor orientation.
        saturation : float
            Clipping level on that scale.
        """
        self.check(pixels)
        if self._num is None:
            self.shape = pixels.shape
            self._num = np.zeros(pixels.shape, np.float32)
            self._den = np.zeros(pixels.shape, np.float32)
        saturated = 0
        for c in range(pixels.shape[2]):
            intensity = pixels[:, :, c]
            w = denoise_noise(intensity, self.params)
            sat = saturation_mask(intensity, saturation)
            saturated += int(sat.sum())
            weighted = np.where(sat, np.float32(0), intensity)
            self._num[:, :, c] += w * weighted
            self._den[:, :, c] += weighted * weighted
        self.saturated_fraction.append(saturated / pixels.size)
        self.count += 1

    def finalize(self) -> np.ndarray:
        """The post-processed grey fingerprint ``K``.

        Returns
        -------
        ndarray, float32, shape (M, N)
            Per-channel ML estimates, converted to grey, CFA zero-meaned and
            Wiener-filtered in the Fourier domain like a residual.
        """
        if self.count == 0:
            raise ValueError("no image was added to the fingerprint")
        with np.errstate(divide="ignore", invalid="ignore"):
            k = np.where(self._den > 0, self._num / self._den, np.float32(0)).astype(np.float32)
        return postprocess(rgb_to_grey(k), self.params)
