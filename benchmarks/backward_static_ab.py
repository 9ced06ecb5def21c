"""A/B of the Triton backward, same block sizes throughout: the dynamic kernels (one binary for every
length, two launches) against `_bwd_static_kernel` (lengths and strides compiled in), in two launches
and in one fused launch (FlexAttention's layout); the autotuned default and SDPA flash, cuDNN and
FlexAttention are timed in the same run. Checks first that every variant gives the same gradients,
bit for bit. GPU only. (A dynamic one-launch kernel was measured too, in the first run of
results/backward_static_ab.json: 0.89-1.00x of two launches at d = 128 non-causal; it was removed.)

    OUT=benchmarks/results python benchmarks/backward_static_ab.py   # writes $OUT/bwd_static_ab.json
    CASES=128:16 CAUSALS=0 NS=8192 PAIRS=1 OUT=... python benchmarks/backward_static_ab.py   # a subset

CASES: d:H pairs; CAUSALS: 0 and/or 1; NS: lengths; PAIRS: how many of each case's tile pairs.
With FLEX_SOURCE=1 it also saves the Triton source that torch.compile generates for FlexAttention's
forward and backward (under $OUT/flex_src/) and a per-kernel profile (torch.profiler) of one backward
of each provider. With NCU_DRIVER=1 it runs two backward calls of each and exits, for Nsight Compute:

    NCU_DRIVER=1 ncu --kernel-name regex:"bwd|tem" --launch-count 8 --section SpeedOfLight \
        --section WarpStateStats --section Occupancy python benchmarks/backward_static_ab.py

"default" is `attention_backward` as users get it (in the recorded runs made before static shapes,
`separate_autotuned`: the autotuned dynamic kernels).
"""
import json, os, pathlib, shutil, sys, tempfile, time

if os.environ.get("FLEX_SOURCE"):  # must be set before torch is imported
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor_"))

import torch, triton
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from kernels import triton_backward as tb, triton_forward as tf
from kernels.bench import _load_flex

out = os.environ.get("OUT", ".")
NS = [int(n) for n in os.environ.get("NS", "4096,8192,16384").split(",")]
t_start = time.time()
bench = lambda f: triton.testing.do_bench(f, warmup=25, rep=150, return_mode="median")
flex = _load_flex().differentiable  # compiled, recompile limits raised, causal through a block mask
CASES = [tuple(int(x) for x in c.split(":")) for c in os.environ.get("CASES", "128:16,64:32").split(",")]  # d:H
CAUSALS = [c == "1" for c in os.environ.get("CAUSALS", "0,1").split(",")]

#: (dK/dV config, dQ config) pairs tried as one fused launch, per (d, causal); the separate launches use the
#: same pairs, and the autotuned default is timed too.
PAIRS_ALL = {
    (128, False): [((64, 128, 8, 3), (128, 64, 8, 3)), ((64, 128, 8, 4), (128, 64, 8, 4))],
    (128, True): [((64, 128, 8, 3), (128, 64, 8, 3)), ((64, 128, 8, 4), (128, 64, 8, 4))],
    (64, False): [((64, 128, 8, 3), (128, 64, 8, 3)), ((64, 128, 4, 3), (128, 64, 4, 3)), ((64, 64, 4, 3), (64, 64, 4, 3))],
    (64, True): [((64, 64, 4, 3), (64, 64, 4, 3)), ((64, 128, 8, 3), (128, 64, 8, 3))],
}

PAIRS = {key: pairs[: int(os.environ.get("PAIRS", "9"))] for key, pairs in PAIRS_ALL.items()}


def grads_of(f, q, k, v, dO):
    qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
    o = f(qq, kk, vv)
    return lambda: torch.autograd.grad(o, (qq, kk, vv), dO, retain_graph=True)


if os.environ.get("NCU_DRIVER"):  # a few backward calls and nothing else, for Nsight Compute (ncu) to profile
    B, H, N, d = 4, 16, 8192, 128
    q, k, v, dO = (torch.randn(B, H, N, d, device="cuda", dtype=torch.float16) for _ in range(4))
    O, L = tf.attention_forward(q, k, v)
    g = grads_of(lambda a, b_, c: flex(a, b_, c, False, None), q, k, v, dO)
    for _ in range(2):
        tb.attention_backward(q, k, v, O, L, dO)
        g()
    torch.cuda.synchronize()
    sys.exit(0)

rows = []
for d, H in CASES:
    for causal in CAUSALS:
        for N in NS:
            B = 4
            g = torch.Generator(device="cuda").manual_seed(0)
            q, k, v, dO = (torch.randn(B, H, N, d, device="cuda", dtype=torch.float16, generator=g) for _ in range(4))
            O, L = tf.attention_forward(q, k, v, is_causal=causal)
            flops = 2.5 * 4 * B * H * N * N * d * (0.5 if causal else 1.0)
            tf_ = lambda ms: flops / ms / 1e9  # noqa: E731
            r = dict(d=d, H=H, B=B, N=N, causal=causal, tflops={}, identical={})
            r["tflops"]["default"] = tf_(bench(lambda: tb.attention_backward(q, k, v, O, L, dO, is_causal=causal)))
            for c1, c2 in PAIRS[(d, causal)]:
                name = f"{c1}+{c2}".replace(" ", "")

                def sep():
                    p = tb._Problem(q, k, v, O, L, dO, causal, None)
                    p.run_dkdv(c1)  # the dynamic kernels
                    p.run_dq(c2)
                    return p

                def static(fused):
                    p = tb._Problem(q, k, v, O, L, dO, causal, None)
                    p.run_static(c1, c2, fused=fused)
                    return p

                a = sep()
                variants = {"static separate": lambda: static(False), "static fused": lambda: static(True)}
                r["tflops"]["separate " + name] = tf_(bench(sep))
                for vname, fn in variants.items():
                    b = fn()
                    r["identical"][f"{vname} {name}"] = all(bool(torch.equal(x, y)) for x, y in ((a.dQ, b.dQ), (a.dK, b.dK), (a.dV, b.dV)))
                    r["tflops"][f"{vname} {name}"] = tf_(bench(fn))
            for prov, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
                with sdpa_kernel(backend):
                    r["tflops"][prov] = tf_(bench(grads_of(lambda a, b_, c: F.scaled_dot_product_attention(a, b_, c, is_causal=causal), q, k, v, dO)))
            r["tflops"]["flex"] = tf_(bench(grads_of(lambda a, b_, c: flex(a, b_, c, causal, None), q, k, v, dO)))
            r["configs"] = tb.tuned_configs()
            rows.append(r)
            t = r["tflops"]
            ours = "  ".join(f"{x} {t[x]:4.0f}" for x in t if x not in ("flex", "flash", "cudnn"))
            print(f"d={d} causal={causal!s:5} N={N:5}  {ours}  "
                  f"flex {t['flex']:4.0f}  flash {t['flash']:4.0f}  cudnn {t['cudnn']:4.0f}  identical {all(r['identical'].values())}  "
                  f"t={time.time() - t_start:.0f}s", flush=True)
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                           date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), rows=rows),
                      open(os.path.join(out, "bwd_static_ab.json"), "w"), indent=1)

if os.environ.get("FLEX_SOURCE"):
    from torch.profiler import ProfilerActivity, profile

    B, H, N, d = 4, 16, 8192, 128
    q, k, v, dO = (torch.randn(B, H, N, d, device="cuda", dtype=torch.float16) for _ in range(4))
    O, L = tf.attention_forward(q, k, v)
    fns = dict(ours=lambda: tb.attention_backward(q, k, v, O, L, dO), flex=grads_of(lambda a, b_, c: flex(a, b_, c, False, None), q, k, v, dO))
    lines = []
    for name, fn in fns.items():
        fn(); torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                fn()
            torch.cuda.synchronize()
        lines.append(f"== {name}: d=128 N=8192 B=4 H=16, 5 backward calls\n")
        lines.append(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12) + "\n")
    open(os.path.join(out, "bwd_profile.txt"), "w").write("".join(lines))
    print("".join(lines)[-3000:])
    dst = pathlib.Path(out) / "flex_src"
    dst.mkdir(exist_ok=True)
    for path in pathlib.Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]).rglob("*.py"):
        text = path.read_text(errors="replace")
        if "flex" in text and "@triton.jit" in text and path.stat().st_size < 400_000:
            shutil.copy(path, dst / path.name)
    print("flex sources saved:", len(list(dst.iterdir())))
