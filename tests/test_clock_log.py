"""kernels.clock_log: nvidia-smi's samples read back and summarised per timed window (CPU only: a fake
nvidia-smi on PATH stands in for the real one)."""

import os
import stat
import time

import pytest

from kernels import bench, clock_log

CSV = """timestamp, clocks.current.sm [MHz], power.draw [W], temperature.gpu, clocks_event_reasons.active
2026/11/26 12:00:00.000, 1980, 120.5, 40, 0x0000000000000000
2026/11/26 12:00:00.050, 1500 MHz, 699.00 W, 66, 0x0000000000000004
2026/11/26 12:00:00.100, 1400, 700.0, 68, 0x0000000000000004
2026/11/26 12:00:00.150, [N/A], 700.0, 68, 0x0000000000000004
2026/11/26 12:00:00.200, 1755, 650.0, 67, 0x0000000000000000
2026/11/26 12:00:00.2"""


def test_samples_are_read_and_summarised(tmp_path):
    path = tmp_path / "smi.csv"
    path.write_text(CSV)
    samples = clock_log.read_samples(str(path))
    assert [s["sm_mhz"] for s in samples] == [1980, 1500, 1400, 1755]  # [N/A] and the cut-off line dropped
    assert samples[1]["t"] - samples[0]["t"] == pytest.approx(0.05)
    inside = [s for s in samples if s["t"] > samples[0]["t"]]  # the three under load
    got = clock_log.summarize(inside)
    assert got == dict(samples=3, sm_mhz=1500, sm_mhz_min=1400, power_w=699.0, temp_c=68, power_capped=pytest.approx(2 / 3))
    assert clock_log.summarize([]) is None


def _fake_smi(tmp_path, monkeypatch, lines):
    """An executable `nvidia-smi` that prints a header and `lines` samples stamped with the current time."""
    script = tmp_path / "bin" / "nvidia-smi"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\necho 'timestamp, clocks.current.sm [MHz], power.draw [W], temperature.gpu, reasons'\n"
                      f"for i in $(seq {lines}); do echo \"$(date '+%Y/%m/%d %H:%M:%S.000'), 1650, 690.0, 65, 0x4\"; done\n"
                      "sleep 30\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")


def test_the_log_runs_nvidia_smi_and_summarises_a_window(tmp_path, monkeypatch):
    _fake_smi(tmp_path, monkeypatch, 3)
    t0 = time.time() - 2
    log = clock_log.ClockLog(str(tmp_path / "smi.csv"), interval_ms=50)
    assert log.running
    time.sleep(0.5)
    log.stop()
    got = log.summary(t0, time.time() + 2)
    assert got == dict(samples=3, sm_mhz=1650, sm_mhz_min=1650, power_w=690.0, temp_c=65, power_capped=1.0)
    assert log.summary(t0 - 100, t0 - 50) is None  # a window before any sample


def test_no_nvidia_smi_means_no_log(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    log = clock_log.ClockLog(str(tmp_path / "smi.csv"))
    assert not log.running
    log.stop()
    assert log.summary(0, time.time()) is None


def test_bench_takes_the_flag():
    args = bench.build_parser().parse_args(["--smi-ms", "50"])
    assert bench.config_from_args(args).smi_ms == 50
    assert bench.config_from_args(bench.build_parser().parse_args([])).smi_ms == 0
