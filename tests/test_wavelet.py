"""The OpenCV DWT equals PyWavelets' symmetric-mode transform and reconstructs perfectly."""

from __future__ import annotations

import numpy as np
import pytest
import pywt

from spncli import wavelet


@pytest.mark.parametrize("shape", [(64, 96), (65, 97), (70, 33), (257, 130)])
@pytest.mark.parametrize("name", ["db4", "db8", "haar", "sym4", "coif2", "bior2.4"])
@pytest.mark.filterwarnings("ignore:Level value")
def test_matches_pywavelets_symmetric(shape, name):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    ours = wavelet.wavedec2(x, name, 4)
    ref = pywt.wavedec2(x, name, level=4, mode="symmetric")
    assert len(ours) == len(ref)
    np.testing.assert_allclose(ours[0], ref[0], atol=1e-4)
    for lo, lr in zip(ours[1:], ref[1:]):
        for a, b in zip(lo, lr):
            assert a.shape == b.shape and a.dtype == np.float32
            np.testing.assert_allclose(a, b, atol=1e-4)
    back = wavelet.waverec2(ours, name)
    np.testing.assert_allclose(back[: shape[0], : shape[1]], x, atol=1e-4)
    np.testing.assert_allclose(back, pywt.waverec2(ref, name, mode="symmetric"), atol=1e-4)
