"""--device cuda where no CUDA GPU is usable: one usage error before any work, with local workers too."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from spncli import device as devices
from spncli.cli import app


@pytest.mark.parametrize(
    ("command", "extra"),
    [("match", []), ("match", ["--workers", "2"]), ("match", ["--case", "CASE"]), ("extract", ["--workers", "2"])],
)
def test_cuda_without_a_gpu_is_one_usage_error_with_local_workers(dresden, tmp_path, monkeypatch, command, extra):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # every device hidden: no GPU can be there
    devices.resolve_device.cache_clear()
    image = dresden / "nat-jpg" / "Nikon_D70_0_19445.JPG"
    where = ["--db", str(tmp_path / "db.h5")] if command == "match" else ["-o", str(tmp_path / "out")]
    extra = [str(tmp_path / "case") if a == "CASE" else a for a in extra]
    try:
        res = CliRunner().invoke(app, [command, str(image), *where, *extra, "--device", "cuda"])
    finally:
        devices.resolve_device.cache_clear()
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    message = "error: --device: device 'cuda' requested but no CUDA GPU is usable here (allowed: auto, cpu, cuda)"
    assert lines == [message]
    assert not (tmp_path / "out").exists() and not (tmp_path / "case").exists()
