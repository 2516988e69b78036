"""Running per-file jobs from the CLI: in-process, or on Dask with --workers / --scheduler."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from ._common import die, err, fail_line, progress

WorkersOption = Annotated[
    int | None, typer.Option(min=1, help="Run in N worker processes (Dask local cluster) [default: in-process].")
]
SchedulerOption = Annotated[str | None, typer.Option(help="Run on an existing Dask scheduler, e.g. tcp://HOST:8786.")]


def run_jobs(
    paths: list[Path],
    job,
    *,
    workers: int | None,
    scheduler: str | None,
    label: str,
    gpu: bool = False,
    cluster: bool = False,
    on_result=None,
    on_interrupt=None,
) -> tuple[int, int]:
    """Run ``job`` over ``paths`` with a progress bar (rate and ETA on stderr).

    Runs on Dask when ``cluster`` is set or --workers/--scheduler were given, else in-process.
    ``on_result(result)`` handles each result (default: one error line per failed file, one line
    per written file) and returns True when the file counts as failed. On Ctrl-C,
    ``on_interrupt()`` runs and the command exits 130; what was written stays complete.
    Returns (done, failed).
    """
    from ..batch import close_client, execute, make_client

    def default(result: dict) -> bool:
        if "error" in result:
            fail_line(result["path"], result["error"])
            return True
        err.print(f"{result['path']} -> {result['written']}")
        return False

    handle = on_result or default
    counts = {"done": 0, "failed": 0}
    started = time.perf_counter()
    with progress(len(paths), label) as bar:
        task = bar.add_task(label, total=len(paths), rate="")

        def on_any(result: dict) -> None:
            counts["failed" if handle(result) else "done"] += 1
            rate = (counts["done"] + counts["failed"]) / max(time.perf_counter() - started, 1e-6)
            bar.update(task, advance=1, rate=f"{rate:.2f} img/s")

        client = None
        try:
            if cluster or workers or scheduler:
                client = make_client(workers, scheduler)
            execute(paths, job, on_result=on_any, client=client, gpu=gpu)
        except KeyboardInterrupt:
            if on_interrupt is not None:
                on_interrupt()
            err.print(f"interrupted: the {counts['done']} result(s) written are complete; re-run to resume")
            raise typer.Exit(130) from None
        except OSError as exc:
            die(f"cannot reach the Dask scheduler {scheduler}: {exc}" if scheduler else f"cluster failed: {exc}")
        finally:
            close_client(client)
    return counts["done"], counts["failed"]
