"""CPU tests of the benchmark tool (kernels.bench): its FLOP and traffic formulas, its
correctness gate, and that a smoke run writes valid JSON, PNG plots and a table.

The GPU figures themselves are not tested here (they are measurements, not contracts)."""

import json
import math

import pytest
import torch

from kernels import bench, reference
from kernels.grading.core import CaseFailure


def _qkvdo(B=1, H=2, N=48, d=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, N, d, generator=g, dtype=dtype) for _ in range(4)]  # (B, H, N, d)


# --- FLOPs -------------------------------------------------------------------------------------


def matmul_flops(m, n, k):
    return 2 * m * n * k  # one multiply and one add per term


@pytest.mark.parametrize("B,H,N,d", [(4, 32, 1024, 64), (1, 16, 65536, 128), (2, 3, 5, 7)])
def test_flops_count_the_matmuls(B, H, N, d):
    # forward: S = Q Kᵀ and O = P V; backward: S again, dV = Pᵀ dO, dP = dO Vᵀ, dQ = dS K, dK = dSᵀ Q
    fwd = B * H * 2 * matmul_flops(N, N, d)
    bwd = B * H * 5 * matmul_flops(N, N, d)
    assert bench.attention_flops(B, H, N, d, False, "fwd") == fwd
    assert bench.attention_flops(B, H, N, d, False, "bwd") == bwd
    assert bench.attention_flops(B, H, N, d, False, "fwd+bwd") == fwd + bwd
    for direction in bench.DIRECTIONS:
        full = bench.attention_flops(B, H, N, d, False, direction)
        assert bench.attention_flops(B, H, N, d, True, direction) == full / 2


def test_flops_of_the_issue_shape():
    assert bench.attention_flops(4, 32, 1024, 64) == 4 * 4 * 32 * 1024**2 * 64
    assert bench.attention_flops(4, 32, 1024, 64, True, "fwd+bwd") == 3.5 * 0.5 * 4 * 4 * 32 * 1024**2 * 64


@pytest.mark.parametrize("bad", [dict(direction="backward"), dict(N=0), dict(d=1.5)])
def test_flops_reject_bad_arguments(bad):
    kw = dict(B=1, H=1, N=8, d=8, causal=False, direction="fwd") | bad
    with pytest.raises(ValueError):
        bench.attention_flops(**kw)


# --- roofline ----------------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
def test_flash_forward_with_one_query_block_moves_only_compulsory_bytes(causal):
    # with B_r = N there is one query block: K and V are read exactly once
    N, d = 256, 64
    flash = bench.hbm_bytes("flash", "fwd", N, d, causal=causal, B_r=N)
    assert flash == bench.hbm_bytes("compulsory", "fwd", N, d)
    assert flash == 2 * 4 * N * d + 4 * N  # Q, K, V, O in fp16, L in fp32


def test_naive_traffic_grows_with_n_squared_and_flash_intensity_is_bounded_by_the_block():
    d, s, B_r = 64, 2, 128
    small, big = (bench.hbm_bytes("naive", "fwd", N, d) for N in (4096, 8192))
    assert 3.5 < big / small < 4.0  # dominated by the N² terms
    assert bench.hbm_bytes("naive", "fwd", 2048, d) > bench.hbm_bytes("flash", "fwd", 2048, d)
    # K and V are read T_r = N / B_r times: intensity → 4N²d / (2·N·d·s·N/B_r) = 2·B_r / s
    ai = bench.arithmetic_intensity("flash", "fwd", 2**20, d, elem_bytes=s, B_r=B_r)
    assert ai == pytest.approx(2 * B_r / s, rel=1e-3)
    assert bench.arithmetic_intensity("naive", "fwd", 4096, d) < ai


def test_roofline_table_lists_every_direction():
    table = bench.roofline_table(Ns=(1024,), ds=(64,))
    for direction in bench.DIRECTIONS:
        assert f"| {direction} | 64 | 1024 |" in table


# --- the correctness gate ----------------------------------------------------------------------


def forgets_the_scale(q, k, v, causal, scale):
    S = q @ k.transpose(-2, -1)  # (B, H, N, N), no 1/sqrt(d)
    if causal:
        S = S.masked_fill(~reference.causal_mask(q.shape[2], k.shape[2]), float("-inf"))
    return torch.softmax(S, dim=-1) @ v


def wrong_diagonal(q, k, v, causal, scale):
    N = q.shape[2]
    mask = torch.ones(N, N, dtype=torch.bool).tril(-1) | (torch.arange(N)[:, None] == 0)  # j < i (row 0 keeps j=0)
    S = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    return torch.softmax(S.masked_fill(~mask, float("-inf")), dim=-1) @ v


@pytest.mark.parametrize("causal", [False, True])
def test_gate_rejects_a_provider_that_forgets_the_scale(causal):
    q, k, v, dO = _qkvdo()
    good = reference.attention(q, k, v, is_causal=causal)
    assert "ok" in bench.check_call("fwd", good, q, k, v, dO, causal, None)
    with pytest.raises(CaseFailure, match="O .*max error"):
        bench.check_call("fwd", forgets_the_scale(q, k, v, causal, None), q, k, v, dO, causal, None)


def test_gate_on_rows_catches_a_wrong_causal_diagonal():
    q, k, v, dO = _qkvdo(N=96)
    rows = bench.check_rows(96, 8, "cpu")
    assert rows.tolist() == list(range(8)) + list(range(88, 96))
    good = reference.attention(q, k, v, is_causal=True)
    bench.check_call("fwd", good, q, k, v, dO, True, None, rows=rows)
    with pytest.raises(CaseFailure):
        bench.check_call("fwd", wrong_diagonal(q, k, v, True, None), q, k, v, dO, True, None, rows=rows)


def test_gate_rejects_a_backward_with_a_wrong_gradient():
    q, k, v, dO = _qkvdo()
    dQ, dK, dV = reference.attention_backward(q, k, v, dO)
    assert "dQ, dK, dV ok" in bench.check_call("bwd", (dQ, dK, dV), q, k, v, dO, False, None)
    with pytest.raises(CaseFailure, match="dK"):
        bench.check_call("bwd", (dQ, dK * 0.5, dV), q, k, v, dO, False, None)
    with pytest.raises(CaseFailure, match="dQ"):  # a row check sees dQ only, and still catches it
        rows = bench.check_rows(q.shape[2], 4, "cpu")
        bench.check_call("bwd", (dQ * 8, dK, dV), q, k, v, dO, False, None, rows=rows)


def _cfg(tmp_path, providers, **kw):
    base = dict(providers=providers, Ns=[32, 64], ds=[16], causals=[False], directions=["fwd"], dtypes=["fp32"],
                batch=1, heads=2, out=str(tmp_path), name="t", device="cpu", warmup_ms=0, rep_ms=1,
                baselines=["sdpa-math"], plots=False, smoke=True, max_call_ms=0)
    return bench.Config(**(base | kw))


def test_a_wrong_provider_is_marked_and_never_timed(tmp_path, monkeypatch):
    impl = bench.Impl(forward=forgets_the_scale, differentiable=forgets_the_scale)
    monkeypatch.setitem(bench.PROVIDERS, "noscale", bench.Provider("noscale", "forgets 1/sqrt(d)", lambda: impl))
    data = bench.Bench(_cfg(tmp_path, ["naive", "noscale"], directions=["fwd", "fwd+bwd"])).run()
    mine = [r for r in data["results"] if r["provider"] == "noscale"]
    assert [r["status"] for r in mine if r["N"] == 32] == ["wrong", "wrong"]
    assert all(r["status"] == "skipped" and r["ms"] is None for r in mine if r["N"] == 64)
    assert all(r["tflops"] is None for r in mine)
    assert all(r["status"] == "ok" and r["tflops"] > 0 for r in data["results"] if r["provider"] == "naive")
    assert any(not c["ok"] and c["provider"] == "noscale" for c in data["checks"])


def test_a_missing_or_crashing_provider_is_reported_and_skipped(tmp_path, monkeypatch):
    def missing():
        import kernels.no_such_module  # noqa: F401

    def crash(q, k, v, causal, scale):
        raise RuntimeError("kernel launch failed")

    monkeypatch.setitem(bench.PROVIDERS, "missing", bench.Provider("missing", "not written yet", missing))
    monkeypatch.setitem(bench.PROVIDERS, "crashes", bench.Provider("crashes", "raises", lambda: bench.Impl(forward=crash)))
    data = bench.Bench(_cfg(tmp_path, ["missing", "crashes", "naive"], Ns=[32])).run()
    assert data["providers"]["missing"]["available"] is False
    assert "ModuleNotFoundError" in data["providers"]["missing"]["reason"]
    (crashed,) = [r for r in data["results"] if r["provider"] == "crashes"]
    assert crashed["status"] == "error" and "kernel launch failed" in crashed["message"]
    assert [r["status"] for r in data["results"] if r["provider"] == "naive"] == ["ok"]


# --- the smoke run: JSON, PNG, table -----------------------------------------------------------


def test_cpu_smoke_run_writes_json_png_and_prints_a_table(tmp_path, capsys):
    rc = bench.main(["--cpu-smoke", "--n", "32,64", "--d", "16", "--out", str(tmp_path), "--name", "smoke"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "CPU numbers are NOT GPU numbers" in out
    assert "== fp32 fwd d=16 non-causal B=1 H=2 (TFLOP/s) ==" in out
    assert "naive / sdpa-math" in out

    data = json.loads((tmp_path / "smoke.json").read_text())
    assert data["complete"] is True and data["smoke"] is True
    assert data["device"]["type"] == "cpu" and data["torch"] == torch.__version__ and data["date"]
    assert "NOT GPU numbers" in data["note"]
    ok = [r for r in data["results"] if r["status"] == "ok"]
    assert {r["provider"] for r in ok} == {"naive", "tiled", "sdpa-math"}
    for r in ok:
        assert r["flops"] == bench.attention_flops(r["B"], r["H"], r["N"], r["d"], r["causal"], r["direction"])
        assert r["tflops"] == pytest.approx(r["flops"] / (r["ms"] * 1e-3) / 1e12)
        assert r["check"] and "ok" in r["check"]
    tiled_bwd = [r for r in data["results"] if r["provider"] == "tiled" and r["direction"] != "fwd"]
    assert tiled_bwd and all(r["status"] == "unsupported" for r in tiled_bwd)
    assert any(x["baseline"] == "sdpa-math" for x in data["ratios"])

    pngs = sorted(tmp_path.glob("smoke_*.png"))
    assert {p.name for p in pngs} >= {"smoke_fp32_fwd.png", "smoke_fp32_bwd.png", "smoke_fp32_fwdbwd.png"}
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_shows_ratios_to_each_baseline():
    def rec(provider, N, tflops, status="ok"):
        return dict(sweep="speed", provider=provider, dtype="fp16", direction="fwd", d=64, causal=False, B=4, H=32, N=N,
                    status=status, tflops=tflops if status == "ok" else None, ms=1.0, peak_bytes=2**20 * N // 1024,
                    message="" if status == "ok" else "max error 1")
    results = [rec("sdpa-flash", 1024, 100.0), rec("flex", 1024, 200.0), rec("triton", 1024, 150.0),
               rec("sdpa-flash", 2048, 120.0), rec("flex", 2048, 240.0), rec("triton", 2048, 0, "wrong")]
    table = bench.format_table(results, ["sdpa-flash", "flex"], ["triton", "sdpa-flash", "flex"])
    lines = {}
    for line in table.splitlines():  # the first row of each name: TFLOP/s (memory rows come later)
        lines.setdefault(line.split("  ")[0].strip(), line)
    assert lines["triton / sdpa-flash"].split()[-1] == "1.50x"
    assert lines["triton / flex"].split()[-1] == "0.75x"
    assert lines["flex / sdpa-flash"].split()[-2:] == ["2.00x", "2.00x"]
    assert "WRONG" in lines["triton"]
    ratios = bench.ratios(results, ["sdpa-flash"])
    assert {(r["provider"], r["N"]): r["ratio"] for r in ratios} == {("flex", 1024): 2.0, ("triton", 1024): 1.5, ("flex", 2048): 2.0}


def test_parse_sizes():
    assert bench.parse_sizes("1k,2k,4096") == [1024, 2048, 4096]
    assert bench.parse_sizes("none") == []
    with pytest.raises(Exception):
        bench.parse_sizes("1q")


def test_traffic_model_agrees_with_the_memory_model_of_lesson_01():
    mm = pytest.importorskip("kernels.memory_model")
    B, H, N, d = 2, 3, 1024, 64
    # forward, non-causal: the two models count the same bytes
    assert bench.hbm_bytes("naive", "fwd", N, d, B=B, H=H) == mm.standard_attention_hbm_bytes(B, H, N, d, torch.float16)
    assert bench.hbm_bytes("flash", "fwd", N, d, B=B, H=H, B_r=128) == mm.flash_attention_hbm_bytes(
        B, H, N, d, torch.float16, B_r=128, B_c=128, order="fa2")
    for direction, pass_ in zip(bench.DIRECTIONS, ("forward", "backward", "forward+backward")):
        for causal in (False, True):
            assert bench.attention_flops(B, H, N, d, causal, direction) == mm.attention_flops(B, H, N, d, causal=causal, pass_=pass_)


def test_report_merges_runs_of_one_machine_and_refuses_mixed_ones(tmp_path):
    def run_file(name, dtype, device_name="H100", tflops=100.0):
        rec = dict(sweep="speed", provider="sdpa-flash", dtype=dtype, direction="fwd", d=64, causal=False, B=4, H=32,
                   N=1024, status="ok", tflops=tflops, ms=1.0, peak_bytes=None, message="")
        data = {"device": {"type": "cuda", "name": device_name}, "torch": "2.11", "triton": "3.6", "cuda": "12.8",
                "date": "2026-01-01T00:00:00", "complete": True, "results": [rec, rec | {"provider": "flex", "tflops": 2 * tflops}]}
        path = tmp_path / name
        path.write_text(json.dumps(data))
        return str(path)

    a, b = run_file("a.json", "fp16"), run_file("b.json", "bf16")
    merged = bench.merge_reports([a, b], str(tmp_path), "m", plots=False)
    assert len(merged["results"]) == 4 and merged["device"]["name"] == "H100"
    assert json.loads((tmp_path / "m.json").read_text())["results"] == merged["results"]
    assert sorted(r["ratio"] for r in merged["ratios"]) == [0.5, 0.5, 2.0, 2.0]  # flex / flash, flash / flex
    with pytest.raises(ValueError, match="different devices"):
        bench.merge_reports([a, run_file("c.json", "fp16", device_name="A100")], str(tmp_path), "m2", plots=False)
