"""Parallel analysis of evidence folders with Dask distributed: one code path for one machine and many.

By default a local cluster of worker processes (one thread each) is started;
``scheduler="tcp://HOST:PORT"`` sends the same work to a lab's existing Dask
cluster. The job (its settings, and the restoration network when asked for)
is scattered to the workers once, never per image; a match job carries the
database's path and SHA-256, not the fingerprints, and each worker reads and
transforms them within its memory budget (:mod:`spncli.spectra`);
restoration tasks, and classic ones run with ``--device cuda``, ask for a
``GPU`` resource where workers declare one; with ``--device auto`` every
worker takes classic tasks and those that declare a ``GPU`` run them on it
(:func:`spncli.device.resolve_device`). A
bounded number of tasks is in flight, so memory stays flat on folders of any
size, and results are handed back as they complete.

The same jobs (:mod:`spncli.jobs`) run in-process when no cluster is asked
for: :func:`execute` is the one path for ``match``, ``match --case``,
``extract`` and ``restore``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from .residual import set_channel_threads

__all__ = ["make_client", "close_client", "execute", "LOST"]

LOST = "worker lost"
"""Start of the reason given for a file whose worker died (memory, kill): not a fault of the file as such."""

_CONFIGURED = False
_HEAP_SET = False

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc mallopt parameters (malloc.h)
KEEP_FREED_BYTES = 512 << 20
"""Freed memory a process keeps for reuse instead of returning it to the system (see :func:`reuse_freed_memory`)."""


def reuse_freed_memory() -> bool:
    """Let glibc serve large arrays from its heap and keep up to :data:`KEEP_FREED_BYTES` freed.

    By default every array over 32 MiB (a 12 MP float32 plane is 48 MB) is a
    fresh ``mmap`` returned to the system when freed, so each temporary of the
    residual costs page faults that the kernel must zero: 0.9-1.5 s of system
    time per 12 MP image, more than the arithmetic, measured here. With
    ``mmap`` off the freed blocks are reused; peak memory is unchanged (the
    same arrays are alive at the peak) and what exceeds the kept amount is
    trimmed; numpy's huge-page advice is dropped where it stalls (:func:`no_huge_page_stalls`). All
    threads share the one heap (glibc would give each thread its own arena, whose large blocks it
    maps afresh: a 48 MP grey residual in two band threads took 5.4 s and 811,000 page faults with
    per-thread arenas, 4.2 s and 94,000 with one). The arena limit binds only threads started
    afterwards (a new thread takes over the arena of one that has ended), so ``spn`` sets it first
    thing (:func:`one_malloc_arena`, from :func:`spncli.cli.main`). Returns whether the heap was set
    (False where the C library is not glibc).
    """
    global _HEAP_SET
    if _HEAP_SET:
        return True
    no_huge_page_stalls()
    mallopt = _mallopt()
    if mallopt is None:
        return False
    _HEAP_SET = (
        bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, KEEP_FREED_BYTES)) and one_malloc_arena()
    )
    return _HEAP_SET


def _mallopt():
    """glibc's ``mallopt``, or None where the C library has none."""
    try:
        import ctypes

        return ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None


def one_malloc_arena() -> bool:
    """Make every thread started from now on allocate from glibc's main heap (``M_ARENA_MAX`` 1).

    Threads that already exist keep their arenas, and a new thread may take over the arena of one that
    has ended, so this is called before any thread starts (:func:`spncli.cli.main`) and again by
    :func:`reuse_freed_memory`. Returns False where the C library is not glibc.
    """
    mallopt = _mallopt()
    return mallopt is not None and bool(mallopt(_M_ARENA_MAX, 1))


THP = Path("/sys/kernel/mm/transparent_hugepage")


def no_huge_page_stalls(thp: Path = THP) -> bool:
    """Stop numpy advising huge pages where that advice makes the kernel compact memory on the first touch.

    NumPy marks every large array ``MADV_HUGEPAGE``. Where transparent huge
    pages are ``enabled`` (``always`` or ``madvise``) and the ``defrag``
    setting compacts memory synchronously for advised regions (``always``,
    ``madvise`` or ``defer+madvise``), a fault in such an array waits until a
    2 MiB page is free; on a machine whose memory is fragmented (page cache,
    other processes) the first touch then stalls. Measured here (``enabled``
    and ``defrag`` both ``madvise``): 1.15 GB of fresh arrays took 0.2-4.4 s
    to touch with the advice and 0.74-0.76 s without; a 48 MP residual
    7.1-7.9 s with it, 5.5-5.9 s without. Returns whether the advice was
    turned off: not where huge pages are off, where every region is treated
    alike (``enabled`` and ``defrag`` both ``always``: the advice changes
    nothing), where ``defrag`` is ``defer`` or ``never``, on systems without
    these settings, or with a numpy that has no such switch.
    """
    try:
        enabled, defrag = ((thp / name).read_text() for name in ("enabled", "defrag"))
    except OSError:
        return False
    if "[never]" in enabled or ("[always]" in enabled and "[always]" in defrag):
        return False
    if not any(f"[{mode}]" in defrag for mode in ("always", "madvise", "defer+madvise")):
        return False
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # numpy < 2
        try:
            from numpy.core.multiarray import _set_madvise_hugepage
        except ImportError:
            return False
    _set_madvise_hugepage(False)
    return True


def _cores() -> int:
    """CPU cores this process may run on (its affinity, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _configure_worker() -> None:
    """One compute thread per worker process (the cluster provides the parallelism); freed arrays reused.

    On a local cluster the fingerprints' transforms are a shared read-only map, not heap arrays, so
    the workers let glibc reuse the residual's freed temporaries as the in-process path does (see
    :func:`reuse_freed_memory`; with a per-worker transform cache, on a remote cluster, heap
    allocation left freed holes between cached transforms: about 0.1 GB more per worker, measured with
    2 workers, 12 MP, 50 cameras).
    """
    global _CONFIGURED
    if not _CONFIGURED:
        import cv2

        cv2.setNumThreads(1)
        reuse_freed_memory()
        _CONFIGURED = True
    torch = sys.modules.get("torch")  # loaded only by jobs that need it (restoration); never imported for classic work
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def make_client(workers: int | None = None, scheduler: str | None = None):
    """A Dask client: to ``scheduler`` if given, else to a new local cluster of ``workers`` processes.

    Dask's own log records (heartbeats, reconnections, shutdown noise, with their tracebacks) are
    silenced here and in the local workers: what matters reaches the caller as a result per file
    ("worker lost: ...") or an exception.
    """
    from distributed import Client, LocalCluster

    for name in ("distributed", "tornado", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)

    if scheduler:
        return Client(scheduler, timeout="20s")
    cluster = LocalCluster(
        n_workers=workers or os.cpu_count() or 1,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",  # any free port: no "port 8787 is already in use" warning on stderr
        silence_logs=logging.CRITICAL,
    )
    return Client(cluster)


def _run(job: Callable[[str], dict], path: str, in_worker: bool = True) -> dict:
    """Task body: one file; never raises for a bad file (the reason is returned).

    In a worker process OpenCV runs one thread (the cluster provides the parallelism); in-process
    it keeps its threads (all cores for the one image at hand) and freed arrays are reused.
    """
    if in_worker:
        _configure_worker()
    else:
        reuse_freed_memory()
        set_channel_threads(_cores())
    try:
        return job(path)
    except MemoryError:
        return {"path": path, "error": "out of memory while analysing this image"}
    except Exception as exc:  # a defect, not bad evidence: recorded as such, and the batch goes on
        return {"path": path, "error": f"internal error (please report): {type(exc).__name__}: {exc}"}


def execute(
    paths: Iterable[Path],
    job: Callable[[str], dict],
    *,
    on_result: Callable[[dict], None],
    client=None,
    gpu: bool = False,
    in_flight: int | None = None,
) -> int:
    """Run ``job`` on every path, in-process (``client=None``) or on a Dask cluster.

    On a cluster the job (with its settings, database reference or network) is
    scattered to the workers once; at most ``in_flight`` tasks are pending
    (default: twice the workers); with ``gpu`` the tasks ask for a ``GPU``
    resource when some worker declares one. ``on_result`` is called in this
    process as results arrive. Returns the number of files run.
    ``KeyboardInterrupt`` propagates after pending tasks are cancelled.
    """
    if client is None:
        n = 0
        for path in paths:
            on_result(_run(job, str(path), in_worker=False))
            n += 1
        return n
    from distributed import as_completed

    with _shared_folder(client, job) as job:
        return _execute_on(client, paths, job, on_result=on_result, gpu=gpu, in_flight=in_flight)


@contextlib.contextmanager
def _shared_folder(client, job):
    """The job with what all its workers read written once into a temporary folder, removed afterwards.

    For a match job on a local cluster: the fingerprint transforms (:meth:`spncli.jobs.MatchJob.share`),
    mapped read-only by every worker. The folder is made by :func:`tempfile.mkdtemp` under ``$TMPDIR``
    (mode 0700, never beside the evidence or the database) and deleted when the run ends; a killed run's
    folder is deleted by the next run (:func:`_remove_abandoned`). A remote scheduler's workers cannot
    see it: they read the database as before.
    """
    share = getattr(job, "share", None)
    if share is None or getattr(client, "cluster", None) is None:
        yield job
        return
    _remove_abandoned()
    folder = tempfile.mkdtemp(prefix=f"{_SHARED_PREFIX}{os.getpid()}-")
    try:
        try:
            job, _ = share(folder, lambda fn, items: client.gather(client.map(fn, items, pure=False)))
        except Exception:  # the workers then read the database themselves: the same scores, more time
            pass
        yield job
    finally:
        shutil.rmtree(folder, ignore_errors=True)


_SHARED_PREFIX = "spn-spectra-"


def _remove_abandoned() -> None:
    """Delete shared folders of this user's runs that were killed (their process is gone).

    Only folders named ``spn-spectra-PID-*`` in the temporary directory, themselves directories (not
    links), owned by this user, whose PID no longer runs; a kill leaves one behind (2.4 GB at 50 × 12 MP).
    """
    root = Path(tempfile.gettempdir())
    for entry in root.glob(f"{_SHARED_PREFIX}*-*"):
        pid = entry.name[len(_SHARED_PREFIX) :].split("-", 1)[0]
        try:
            info = os.lstat(entry)
            if not (pid.isdigit() and stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()):
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except OSError:  # gone meanwhile, or another user's process: left alone
            continue


def _execute_on(client, paths, job, *, on_result, gpu, in_flight) -> int:
    """:func:`execute` on a Dask cluster."""
    from distributed import as_completed

    info = client.scheduler_info().get("workers", {})
    kwargs = {"resources": {"GPU": 1}} if gpu and any(w.get("resources", {}).get("GPU") for w in info.values()) else {}
    shared = client.scatter([job], broadcast=True, hash=False)[0]  # a list: scatter splits collections
    limit = in_flight or 2 * max(len(info), 1)
    pending = as_completed()
    iterator = iter(paths)
    submitted = 0
    path_of = {}

    def submit_next() -> bool:
        nonlocal submitted
        path = next(iterator, None)
        if path is None:
            return False
        future = client.submit(_run, shared, str(path), pure=False, **kwargs)
        path_of[future.key] = str(path)
        pending.add(future)
        submitted += 1
        return True

    try:
        for _ in range(limit):
            if not submit_next():
                break
        for future in pending:
            try:
                result = future.result()
            except Exception as exc:  # the worker died (memory, kill): that file fails, the batch goes on
                result = {"path": path_of[future.key], "error": f"{LOST}: {type(exc).__name__}: {exc}", "lost": True}
            path_of.pop(future.key, None)
            future.release()
            on_result(result)
            submit_next()
    except BaseException:
        for f in list(pending.futures):
            f.cancel()
        raise
    return submitted


def close_client(client) -> None:
    """Close a client and the local cluster it started (if any)."""
    if client is None:
        return
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()
