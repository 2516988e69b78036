"""Where the classic pipeline runs: ``--device auto|cpu|cuda``, resolved without importing torch on the CPU path.

``cpu`` is the reference path (numpy and OpenCV, :mod:`spncli.residual`,
:mod:`spncli.pce`). ``cuda`` runs the same maths through torch on a CUDA GPU
(:mod:`spncli.torchclassic`); asking for it where no CUDA GPU is usable is an
error. ``auto`` takes CUDA when it is usable, else the numpy path.

``auto`` must not cost the 1 s that importing torch costs on a machine
without a GPU, so torch is imported only when a GPU can be there at all:
torch is installed (``importlib.util.find_spec``, which imports nothing),
``CUDA_VISIBLE_DEVICES`` does not hide every device, and the NVIDIA driver is
loaded (``/proc/driver/nvidia/version`` or a ``/dev/nvidia<N>`` node). Only
then is ``torch.cuda.is_available()`` asked.

In a Dask worker, ``auto`` means CUDA exactly when the worker declares a
``GPU`` resource (``dask worker --resources GPU=1``) and CUDA is usable
there; workers that declare none stay on the numpy path, so several CPU
workers never queue on one card.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
from functools import lru_cache

from . import residual

__all__ = [
    "DEVICES",
    "DeviceUnavailable",
    "check_device",
    "gpu_present",
    "cuda_usable",
    "resolve_device",
    "backend_name",
    "compute_record",
    "classic_residual",
    "grey_residual",
    "postprocess",
]

DEVICES = ("auto", "cpu", "cuda")
"""Values of ``--device``."""

REFERENCE_BACKEND = "numpy+OpenCV (reference)"

TORCH_CPU = "torch-cpu"
"""A resolved device no option gives: the torch code on the CPU, for tests and benchmarks of the GPU path."""


class DeviceUnavailable(ValueError):
    """``cuda`` was asked for where no CUDA GPU is usable."""


def check_device(request: str) -> str:
    """The request, or ValueError naming the allowed values."""
    if request not in DEVICES:
        raise ValueError(f"device {request!r} is not one of {', '.join(DEVICES)}")
    return request


def gpu_present() -> bool:
    """Whether a CUDA GPU can be there at all, judged without importing torch (see the module notes)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return False
    if importlib.util.find_spec("torch") is None:
        return False
    return os.path.exists("/proc/driver/nvidia/version") or bool(glob.glob("/dev/nvidia[0-9]*"))


@lru_cache(maxsize=1)
def cuda_usable() -> bool:
    """Whether torch can use a CUDA GPU here (imports torch; cached per process)."""
    from .torchclassic import cuda_available

    return cuda_available()


def _worker_gpu() -> bool | None:
    """In a Dask worker: whether it declares a ``GPU`` resource; None outside a worker."""
    if "distributed" not in sys.modules:
        return None
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:
        return None
    return bool(worker.state.total_resources.get("GPU", 0))


@lru_cache(maxsize=8)
def resolve_device(request: str) -> str:
    """``"cpu"`` (numpy reference path) or ``"cuda"`` (torch) for a ``--device`` request, in this process.

    Raises
    ------
    ValueError
        If ``request`` is not auto, cpu or cuda.
    DeviceUnavailable
        If it is cuda where no CUDA GPU is usable.
    """
    if request == TORCH_CPU:
        return TORCH_CPU
    check_device(request)
    if request == "cpu":
        return "cpu"
    if request == "cuda":
        if not (gpu_present() and cuda_usable()):
            raise DeviceUnavailable("device 'cuda' requested but no CUDA GPU is usable here (allowed: auto, cpu, cuda)")
        return "cuda"
    in_worker = _worker_gpu()
    if in_worker is not None:
        return "cuda" if in_worker and gpu_present() and cuda_usable() else "cpu"
    return "cuda" if gpu_present() and cuda_usable() else "cpu"


def backend_name(device: str) -> str:
    """What computed the classic pipeline on ``device``: the numpy reference, or torch with the card's name."""
    if device == "cpu":
        return REFERENCE_BACKEND
    from .torchclassic import backend_name as torch_backend

    return torch_backend(torch_device(device))


def torch_device(device: str) -> str:
    """The torch device of a resolved device other than ``"cpu"``."""
    return "cpu" if device == TORCH_CPU else device


def compute_record(request: str, device: str) -> dict:
    """Provenance of where the classic work ran: ``{"device_requested", "device", "backend"}``."""
    return {"device_requested": request, "device": device, "backend": backend_name(device)}


def classic_residual(pixels, params, device: str = "cpu", *, spectrum: bool = False):
    """:func:`spncli.residual.extract_residual` on the resolved ``device`` (float32 numpy back).

    With ``spectrum``: ``(residual, half spectrum or None)``, the spectrum where the CPU's Wiener step made it.
    """
    if device == "cpu":
        return residual.extract_residual(pixels, params, spectrum=spectrum)
    from . import torchclassic

    w = torchclassic.to_numpy(torchclassic.extract_residual(pixels, params, torch_device(device)))
    return (w, None) if spectrum else w


def grey_residual(pixels, params, device: str = "cpu"):
    """:func:`spncli.residual.grey_residual` on the resolved ``device`` (float32 numpy back)."""
    if device == "cpu":
        return residual.grey_residual(pixels, params)
    from . import torchclassic

    return torchclassic.to_numpy(torchclassic.grey_residual(pixels, params, torch_device(device)))


def postprocess(x, params, device: str = "cpu"):
    """:func:`spncli.residual.postprocess` on the resolved ``device`` (float32 numpy back)."""
    if device == "cpu":
        return residual.postprocess(x, params)
    from . import torchclassic

    t = torchclassic.to_device(x, torch_device(device))
    return torchclassic.to_numpy(torchclassic.postprocess(t, params))

