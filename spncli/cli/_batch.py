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
    paths: list[Path], job, *, workers: int | None, scheduler: str | None, label: str, gpu: bool = False
) -> tuple[int, int]:
    """Run ``job`` over ``paths`` with a progress bar; one error line per failed file.

    Returns (done, failed). Ctrl-C stops cleanly (exit 130): files written so far are complete.
    """
    from ..batch import close_client, execute, make_client

    counts = {"done": 0, "failed": 0}
    started = time.perf_counter()
    with progress(len(paths), label) as bar:
        task = bar.add_task(label, total=len(paths), rate="")

        def on_result(result: dict) -> None:
            if "error" in result:
                fail_line(result["path"], result["error"])
                counts["failed"] += 1
            else:
                counts["done"] += 1
                err.print(f"{result['path']} -> {result['written']}")
            rate = (counts["done"] + counts["failed"]) / max(time.perf_counter() - started, 1e-6)
            bar.update(task, advance=1, rate=f"{rate:.2f} img/s")

        client = None
        try:
            if workers or scheduler:
                client = make_client(workers, scheduler)
            execute(paths, job, on_result=on_result, client=client, gpu=gpu)
        except KeyboardInterrupt:
            err.print(f"interrupted: {counts['done']} file(s) written are complete")
            raise typer.Exit(130) from None
        except OSError as exc:
            die(f"cannot reach the Dask scheduler {scheduler}: {exc}" if scheduler else f"cluster failed: {exc}")
        finally:
            close_client(client)
    return counts["done"], counts["failed"]
