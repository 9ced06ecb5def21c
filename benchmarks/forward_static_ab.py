"""A/B of the Triton forward: one binary for every length (lengths and strides are run-time
arguments) against one binary per shape (`_attention_forward_static_kernel`: lengths and strides
compiled in), same tiles; SDPA flash, cuDNN and FlexAttention timed in the same run. Checks first
that both give the same O and L, bit for bit. GPU only.

    OUT=benchmarks/results python benchmarks/forward_static_ab.py   # writes $OUT/fwd_static_ab.json
"""
import json, os, pathlib, sys, time

import torch, triton
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from kernels import triton_forward as tf
from kernels.bench import _load_flex

out = os.environ.get("OUT", ".")
NS = [int(n) for n in os.environ.get("NS", "4096,8192,16384").split(",")]
CASES = [tuple(int(x) for x in c.split(":")) for c in os.environ.get("CASES", "128:16,64:32").split(",")]  # d:H
bench = lambda f: triton.testing.do_bench(f, warmup=25, rep=150, return_mode="median")  # noqa: E731
flex = _load_flex().forward
#: (BLOCK_M, BLOCK_N, warps, stages, Q_BLOCKS) per head dim: the autotuner's usual winners
CONFIGS = {128: [(128, 128, 8, 3, 1), (128, 128, 8, 3, 2)], 64: [(128, 128, 4, 3, 1), (128, 128, 4, 3, 2)]}
t_start = time.time()
rows = []
for d, H in CASES:
    for causal in (False, True):
        for N in NS:
            B = 4
            g = torch.Generator(device="cuda").manual_seed(0)
            q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.float16, generator=g) for _ in range(3))
            flops = 4 * B * H * N * N * d * (0.5 if causal else 1.0)
            tf_ = lambda ms: flops / ms / 1e9  # noqa: E731
            r = dict(d=d, H=H, B=B, N=N, causal=causal, tflops={}, identical={})
            r["tflops"]["autotuned"] = tf_(bench(lambda: tf.attention_forward(q, k, v, is_causal=causal)))
            for m, n, w, st, qb in CONFIGS[d]:
                cfg = dict(BLOCK_M=m, BLOCK_N=n, num_warps=w, num_stages=st, Q_BLOCKS=qb)
                name = f"({m},{n},{w},{st},{qb})"
                a = tf.launch(q, k, v, is_causal=causal, config=cfg)
                b = tf.launch(q, k, v, is_causal=causal, config=cfg, static=True)
                r["identical"][name] = bool(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]))
                r["tflops"]["dynamic " + name] = tf_(bench(lambda: tf.launch(q, k, v, is_causal=causal, config=cfg)))
                r["tflops"]["static " + name] = tf_(bench(lambda: tf.launch(q, k, v, is_causal=causal, config=cfg, static=True)))
            for prov, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
                with sdpa_kernel(backend):
                    r["tflops"][prov] = tf_(bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)))
            r["tflops"]["flex"] = tf_(bench(lambda: flex(q, k, v, causal, None)))
            rows.append(r)
            t = r["tflops"]
            print(f"d={d} causal={causal!s:5} N={N:5}  " + "  ".join(f"{x} {y:4.0f}" for x, y in t.items())
                  + f"  identical {all(r['identical'].values())}  t={time.time() - t_start:.0f}s", flush=True)
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                           date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), rows=rows),
                      open(os.path.join(out, "fwd_static_ab.json"), "w"), indent=1)
