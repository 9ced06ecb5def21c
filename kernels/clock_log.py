"""The GPU's SM clock, power and temperature while something is timed, from nvidia-smi.

Why: on the H100 a kernel's time depends on the clock, and the clock on power (a 700 W cap) and
temperature. Two kernels timed a second apart can run at different clocks. `python -m kernels.bench
--smi-ms 50` logs nvidia-smi beside the run and writes, for every timed job, the clock, power and
temperature it ran at, so a low figure can be told apart from a slow clock.

    log = ClockLog("smi.csv", interval_ms=50)   # starts nvidia-smi in the background (or does nothing)
    t0 = time.time(); ...timed work...; t1 = time.time()
    log.stop(); log.summary(t0, t1)   # {"sm_mhz": ..., "sm_mhz_min": ..., "power_w": ..., "temp_c": ..., ...}
"""
from __future__ import annotations

import csv
import datetime
import statistics
import subprocess

#: what nvidia-smi is asked for, in this order
FIELDS = "timestamp,clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active"
#: the clock-event reason bit that means "held down by the software power cap"
SW_POWER_CAP = 0x4


class ClockLog:
    """nvidia-smi sampling every interval_ms into a CSV file; nothing at all where there is no nvidia-smi."""

    def __init__(self, path: str, interval_ms: int = 50):
        self.path, self.proc, self.samples = path, None, None
        self._out = open(path, "w")
        try:
            self.proc = subprocess.Popen(["nvidia-smi", f"--query-gpu={FIELDS}", "--format=csv,nounits",
                                          "-lms", str(int(interval_ms))], stdout=self._out, stderr=subprocess.DEVNULL)
        except OSError:  # no nvidia-smi on this machine
            self._out.close()

    @property
    def running(self) -> bool:
        return self.proc is not None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        if self.proc is not None:
            self._out.close()
        self.samples = read_samples(self.path) if self.proc is not None else []

    def summary(self, t0: float, t1: float) -> dict | None:
        """Samples taken between t0 and t1 (time.time() seconds): median and lowest SM clock, median
        power, highest temperature, and the share of samples with the power cap active."""
        if self.samples is None:
            self.samples = read_samples(self.path) if self.proc is not None else []
        return summarize([s for s in self.samples if t0 <= s["t"] <= t1])


def read_samples(path: str) -> list[dict]:
    """nvidia-smi's CSV (header first; timestamps in local time, as nvidia-smi prints them) as dicts."""
    out = []
    with open(path) as f:
        for row in csv.reader(f):
            if not row or row[0].startswith("timestamp"):
                continue
            try:
                t = datetime.datetime.strptime(row[0].strip(), "%Y/%m/%d %H:%M:%S.%f")
                num = [float(x.split()[0]) for x in row[1:4]]  # "1980" or, with units, "1980 MHz"
                out.append(dict(t=t.timestamp(), sm_mhz=num[0], power_w=num[1], temp_c=num[2],  # t: local time
                                reasons=int(row[4], 16)))
            except (ValueError, IndexError):  # a cut-off last line, or "[N/A]"
                continue
    return out


def summarize(samples: list[dict]) -> dict | None:
    if not samples:
        return None
    return dict(samples=len(samples), sm_mhz=statistics.median(s["sm_mhz"] for s in samples),
                sm_mhz_min=min(s["sm_mhz"] for s in samples), power_w=statistics.median(s["power_w"] for s in samples),
                temp_c=max(s["temp_c"] for s in samples),
                power_capped=sum(bool(s["reasons"] & SW_POWER_CAP) for s in samples) / len(samples))
