"""benchmarks/issue9_targets.py: the target checker reads a kernels.bench JSON correctly."""

import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("issue9_targets", ROOT / "benchmarks" / "issue9_targets.py")
targets = importlib.util.module_from_spec(spec)
spec.loader.exec_module(targets)


def rec(provider, tflops, *, d=128, N=4096, causal=False, direction="fwd", sweep="speed", dtype="fp16", peak=None):
    return dict(provider=provider, tflops=tflops, d=d, N=N, causal=causal, direction=direction, sweep=sweep,
                dtype=dtype, peak_bytes=peak)


def run(tmp_path, results, capsys):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"device": {"name": "test"}, "torch": "t", "triton": "t", "date": "2026", "results": results}))
    assert targets.main(str(path)) == 0
    return capsys.readouterr().out


def test_ratio_within_one_run_and_shape(tmp_path, capsys):
    out = run(tmp_path, [rec("triton", 300.0), rec("sdpa-flash", 200.0), rec("triton", 100.0, N=2048),
                         rec("sdpa-flash", 200.0, N=2048)], capsys)
    # 300 / 200 = 1.5 at N = 4096 meets the 1.5x target; N = 2048 is below the N >= 4096 range
    assert "Triton fwd >= 1.5x SDPA flash, d=128: met at 1 of 1 shapes (lowest 1.500x)" in out
    assert "N= 2048" not in out


def test_a_miss_is_reported(tmp_path, capsys):
    out = run(tmp_path, [rec("triton", 290.0), rec("sdpa-flash", 200.0)], capsys)
    assert "met at 0 of 1 shapes (lowest 1.450x)" in out and "MISS fp16 d=128 full   N= 4096  1.450x" in out


def test_memory_target(tmp_path, capsys):
    mib = 2**20
    out = run(tmp_path, [rec("triton", None, N=65536, direction="fwd+bwd", sweep="memory", peak=1000 * mib),
                         rec("sdpa-flash", None, N=65536, direction="fwd+bwd", sweep="memory", peak=2000 * mib)], capsys)
    assert "Triton 1000 MiB, SDPA flash 2000 MiB (Triton / flash = 0.50" in out


def test_recorded_run_parses(capsys):
    path = ROOT / "benchmarks" / "results" / "bench_h100.json"
    assert path.exists(), "the recorded H100 benchmark run is part of the repository"
    assert targets.main(str(path)) == 0
    assert "H100" in capsys.readouterr().out


def test_default_forward_is_the_one_flash_attention_runs():
    """issue9_targets' "default" rows take the Gluon provider at the head dims where flash_attention
    runs the Gluon kernel, and the Triton provider elsewhere."""
    gf = pytest.importorskip("kernels.gluon_forward")
    for d, provider in targets.DEFAULT_FORWARD.items():
        assert (provider == "gluon") == (d in gf.DEFAULT_HEAD_DIMS), (d, provider)
    assert set(gf.DEFAULT_HEAD_DIMS) <= set(targets.DEFAULT_FORWARD)


def test_default_rows_follow_the_head_dim(tmp_path, capsys, monkeypatch):
    """The default rows take the provider DEFAULT_FORWARD names for the head dim (Gluon at both head
    dims now; here d = 64 is set to Triton to show the rows follow the table, not a fixed provider)."""
    monkeypatch.setattr(targets, "DEFAULT_FORWARD", {64: "triton", 128: "gluon"})
    out = run(tmp_path, [rec("triton", 330.0), rec("gluon", 310.0), rec("sdpa-flash", 200.0),
                         rec("triton", 270.0, d=64), rec("gluon", 300.0, d=64), rec("sdpa-flash", 200.0, d=64)], capsys)
    assert "default fwd >= 1.5x SDPA flash, d=128: met at 1 of 1 shapes (lowest 1.550x)" in out  # gluon's 310
    assert "default fwd >= 1.4x SDPA flash, d=64: met at 0 of 1 shapes (lowest 1.350x)" in out  # triton's 270
