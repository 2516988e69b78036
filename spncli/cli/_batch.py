"""Running per-file jobs from the CLI: in-process, or on Dask with --workers / --scheduler; progress on stderr."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from ._common import decoder_warnings, die, err, fail_line, note, progress

WorkersOption = Annotated[
    int | None, typer.Option(min=1, help="Run in N worker processes (Dask local cluster) [default: in-process].")
]
SchedulerOption = Annotated[str | None, typer.Option(help="Run on an existing Dask scheduler, e.g. tcp://HOST:8786.")]

PLAIN_EVERY_S = 5.0
"""Seconds between two plain progress lines when stderr is not a terminal (a log file, a pipe, CI)."""


class BatchProgress:
    """Progress of a batch on stderr: a bar on a terminal, else a plain line every few seconds.

    Use as a context manager; call :meth:`start` with the number of files (when known) and
    :meth:`advance` once per file.
    """

    def __init__(self, label: str, every_s: float = PLAIN_EVERY_S):
        self.label, self.every_s = label, every_s
        self.total = 0
        self.done = self.failed = 0
        self.started = self.last_line = time.monotonic()
        self.bar = progress(None, label)
        self.task = None

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def start(self, total: int) -> None:
        self.total = total
        self.started = self.last_line = time.monotonic()
        self.task = self.bar.add_task(self.label, total=total, rate="")

    def advance(self, failed: bool = False) -> None:
        self.done += 1
        self.failed += failed
        now = time.monotonic()
        rate = self.done / max(now - self.started, 1e-6)
        if self.task is not None:
            self.bar.update(self.task, advance=1, rate=f"{rate:.2f} img/s")
        if not err.is_terminal and (now - self.last_line >= self.every_s or self.done == self.total):
            self.last_line = now
            left = f", about {(self.total - self.done) / rate:.0f} s left" if self.total > self.done else ""
            err.print(f"{self.label}: {self.done}/{self.total} file(s), {self.failed} failed, {rate:.2f} img/s{left}")


def run_jobs(
    paths: list[Path],
    job,
    *,
    workers: int | None,
    scheduler: str | None,
    label: str,
    gpu: bool = False,
    on_result=None,
) -> tuple[int, int]:
    """Run ``job`` over ``paths`` (Dask with --workers/--scheduler, else in-process) with progress on stderr.

    ``on_result(result)`` handles each result (default: one error line per failed file, one line
    per written file) and returns True when the file counts as failed. On Ctrl-C the command exits
    130; what was written stays complete. Returns (done, failed).
    """
    from ..batch import close_client, execute, make_client

    def default(result: dict) -> bool:
        if "error" in result:
            fail_line(result["path"], result["error"])
            return True
        decoder_warnings(result)
        note(f"{result['path']} -> {result['written']}")
        return False

    handle = on_result or default
    with BatchProgress(label) as bar:
        bar.start(len(paths))

        def on_any(result: dict) -> None:
            bar.advance(bool(handle(result)))

        client = None
        try:
            if workers or scheduler:
                client = make_client(workers, scheduler)
            execute(paths, job, on_result=on_any, client=client, gpu=gpu)
        except KeyboardInterrupt:
            err.print(f"interrupted: the {bar.done - bar.failed} result(s) written are complete; re-run to resume")
            raise typer.Exit(130) from None
        except OSError as exc:
            die(f"cannot reach the Dask scheduler {scheduler}: {exc}" if scheduler else f"cluster failed: {exc}")
        finally:
            close_client(client)
    return bar.done - bar.failed, bar.failed
