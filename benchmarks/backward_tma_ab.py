"""A/B of the Triton backward: pointer loads vs TMA descriptors (autotuned, per shape), SDPA flash as
the anchor; checks that both paths give the same gradients. GPU only.

    OUT=benchmarks/results python benchmarks/backward_tma_ab.py   # writes $OUT/bwd_ab.json
"""
import json, os, pathlib, sys, time
import torch, triton
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from kernels import triton_backward as tb, triton_forward as tf, reference
from kernels.grading.core import tolerance
out = os.environ.get("OUT", ".")
rows = []
t_start = time.time()
bench = lambda f: triton.testing.do_bench(f, warmup=50, rep=300, return_mode="median")
for d, H in ((128, 16), (64, 32)):
    for causal in (False, True):
        for N in (4096, 16384):
            B = 4
            g = torch.Generator(device="cuda").manual_seed(0)
            q, k, v, dO = (torch.randn(B, H, N, d, device="cuda", dtype=torch.float16, generator=g) for _ in range(4))
            O, L = tf.attention_forward(q, k, v, is_causal=causal)
            flops = 2.5 * 4 * B * H * N * N * d * (0.5 if causal else 1.0)
            r = dict(d=d, causal=causal, N=N)
            ref = None
            for tma in (False, True):
                f = lambda: tb.attention_backward(q, k, v, O, L, dO, is_causal=causal, use_tma=tma)
                got = f()
                if ref is None:
                    ref = got
                else:
                    r["max_diff_vs_pointer"] = max(float((a - b).abs().max()) for a, b in zip(got, ref))
                r["tma" if tma else "ptr"] = flops / bench(f) / 1e9
            qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                o = F.scaled_dot_product_attention(qq, kk, vv, is_causal=causal)
                r["flash"] = flops / bench(lambda: torch.autograd.grad(o, (qq, kk, vv), dO, retain_graph=True)) / 1e9
            r["configs"] = tb.tuned_configs()
            rows.append(r)
            print(f"d={d} causal={causal!s:5} N={N:5}  ptr {r['ptr']:5.0f}  tma {r['tma']:5.0f}  flash {r['flash']:5.0f}  "
                  f"tma/ptr {r['tma']/r['ptr']:.3f}  tma/flash {r['tma']/r['flash']:.3f}  diff {r['max_diff_vs_pointer']:.1e}  t={time.time()-t_start:.0f}s", flush=True)
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__, rows=rows),
                      open(os.path.join(out, "bwd_ab.json"), "w"), indent=1)
