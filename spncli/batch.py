"""Parallel analysis of evidence folders with Dask distributed: one code path for one machine and many.

By default a local cluster of worker processes (one thread each) is started;
``scheduler="tcp://HOST:PORT"`` sends the same work to a lab's existing Dask
cluster. The scoring state (the fingerprints' transforms, and the restoration
network when asked for) is scattered to the workers once, never per image;
restoration tasks ask for a ``GPU`` resource where workers declare one. A
bounded number of tasks is in flight, so memory stays flat on folders of any
size, and results are handed back as they complete.

Workers read each file once, hash it, and skip the ones whose SHA-256 is
already in the case; the rest are decoded and scored as in
:class:`spncli.identify.Matcher`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from .evidence import EvidenceError, decode, read_bytes
from .identify import Matcher
from .plots import preview_png

__all__ = ["make_client", "analyse_file", "run_batch"]

_CONFIGURED = False


def _configure_worker() -> None:
    """One compute thread per worker process (the cluster provides the parallelism)."""
    global _CONFIGURED
    if not _CONFIGURED:
        import cv2

        cv2.setNumThreads(1)
        try:
            import torch

            torch.set_num_threads(1)
        except ImportError:
            pass
        _CONFIGURED = True


def make_client(workers: int | None = None, scheduler: str | None = None):
    """A Dask client: to ``scheduler`` if given, else to a new local cluster of ``workers`` processes."""
    from distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler, timeout="20s")
    cluster = LocalCluster(
        n_workers=workers or os.cpu_count() or 1,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    return Client(cluster)


def analyse_file(path: str, matcher: Matcher, skip: frozenset, max_pixels: int, preview_side: int = 768) -> dict:
    """Worker task: read, hash, skip if done, decode, score; never raises for a bad file.

    Returns
    -------
    dict
        ``{"path", "error"}`` for a file that failed, ``{"path", "sha256",
        "skipped": True}`` for one already in the case, else ``{"path",
        "sha256", "records", "surfaces", "preview"}``.
    """
    _configure_worker()
    try:
        data = read_bytes(path)
        sha = hashlib.sha256(data).hexdigest()
        if sha in skip:
            return {"path": path, "sha256": sha, "skipped": True}
        ev = decode(data, path, max_pixels=max_pixels)
        del data
        residual = matcher.residual(ev)
        records = matcher.match(ev, surfaces=True, residual=residual)
    except EvidenceError as exc:
        return {"path": path, "error": exc.reason}
    except MemoryError:
        return {"path": path, "error": "out of memory while analysing this image"}
    except Exception as exc:  # one bad file must not stop a seized-disk batch; the reason is recorded
        return {"path": path, "error": f"analysis failed: {type(exc).__name__}: {exc}"}
    surfaces = {r["camera"]: r.pop("_surface") for r in records if "_surface" in r}
    for r in records:
        r["size_bytes"] = ev.size_bytes
    preview = preview_png(residual[0], preview_side) if surfaces else None
    return {"path": path, "sha256": ev.sha256, "records": records, "surfaces": surfaces, "preview": preview}


def run_batch(
    client,
    paths: Iterable[Path],
    matcher: Matcher,
    *,
    skip: frozenset = frozenset(),
    max_pixels: int,
    on_result: Callable[[dict], None],
    in_flight: int | None = None,
) -> int:
    """Score every path on the cluster, calling ``on_result`` in the main process as results arrive.

    Returns the number of files submitted. ``KeyboardInterrupt`` propagates
    after the pending tasks are cancelled (results already handed over stay).
    """
    from distributed import as_completed

    info = client.scheduler_info()
    n_workers = max(len(info.get("workers", {})), 1)
    gpu = matcher.restorer is not None and any(
        w.get("resources", {}).get("GPU") for w in info.get("workers", {}).values()
    )
    shared = client.scatter([matcher], broadcast=True, hash=False)[0]  # a list: scatter splits collections
    skip_shared = client.scatter([skip], broadcast=True, hash=False)[0]
    limit = in_flight or 2 * n_workers
    submitted = 0
    pending = as_completed()
    iterator = iter(paths)
    kwargs = {"resources": {"GPU": 1}} if gpu else {}

    def submit_next() -> bool:
        nonlocal submitted
        path = next(iterator, None)
        if path is None:
            return False
        pending.add(client.submit(analyse_file, str(path), shared, skip_shared, max_pixels, pure=False, **kwargs))
        submitted += 1
        return True

    try:
        for _ in range(limit):
            if not submit_next():
                break
        for future in pending:
            result = future.result()
            future.release()
            on_result(result)
            submit_next()
    except BaseException:
        for f in list(pending.futures):
            f.cancel()
        raise
    return submitted
