"""The capstone on the H100: the small GPT trained with the course's Triton attention and with
torch SDPA, same initial weights, same batches; both loss curves recorded.

    python benchmarks/capstone_gpu.py --out DIR        # writes DIR/capstone_h100.json (+ .png)

Besides the two runs compared step by step, a third SDPA run with another seed measures what
"noise" means here: the gap between two seeds is the yardstick for the gap between the kernels.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL = dict(block_size=256, n_layer=6, n_head=6, n_embd=384)  # head dim 64
TRAIN = dict(steps=300, batch_size=64, lr=1e-3)


def plot(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, style in (("sdpa", "-"), ("course", "--"), ("sdpa_seed1", ":")):
        if name in res["runs"]:
            ax.plot(res["runs"][name]["losses"], style, label=f"{name} ({res['runs'][name]['attention']})")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats per character)")
    ax.set_title(f"Capstone GPT on {res['device']}: course Triton kernel vs SDPA")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--steps", type=int, default=TRAIN["steps"])
    ap.add_argument("--plot", help="redraw the PNG of a recorded JSON")
    args = ap.parse_args(argv)
    if args.plot:
        plot(json.loads(pathlib.Path(args.plot).read_text()), pathlib.Path(args.plot).with_suffix(".png"))
        return 0
    import triton

    from kernels import data, gpt

    if not torch.cuda.is_available():
        print("capstone_gpu needs a CUDA GPU")
        return 1
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = data.load_text()
    tok = gpt.CharTokenizer(text)
    ids = tok.encode(text)
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
               date=datetime.datetime.now(datetime.timezone.utc).isoformat(), model=MODEL,
               train={**TRAIN, "steps": args.steps}, amp="bfloat16", corpus=f"kernels/data/tiny_tales.txt ({len(text)} chars)",
               runs={})
    for name, attention, seed in (("sdpa", "sdpa", 0), ("course", "triton", 0), ("sdpa_seed1", "sdpa", 1)):
        cfg = gpt.GPTConfig(vocab_size=tok.vocab_size, attention=attention, **MODEL)
        torch.cuda.synchronize()
        r = gpt.train(cfg, ids, steps=args.steps, batch_size=TRAIN["batch_size"], lr=TRAIN["lr"], seed=seed,
                      dev="cuda", amp_dtype=torch.bfloat16, log_every=50)
        torch.cuda.synchronize()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            sample = tok.decode(r["model"].generate(torch.zeros(1, 1, dtype=torch.long, device="cuda"), 200,
                                                    generator=torch.Generator(device="cuda").manual_seed(0))[0].tolist())
        res["runs"][name] = dict(attention=attention, seed=seed, losses=r["losses"], seconds=r["seconds"], sample=sample)
        print(f"{name}: final loss {r['losses'][-1]:.4f}, {r['seconds']:.1f} s\n  sample: {sample[:160]!r}", flush=True)
        (out / "capstone_h100.json").write_text(json.dumps(res, indent=1))
    a, b, c = (res["runs"][n]["losses"] for n in ("sdpa", "course", "sdpa_seed1"))
    tail = slice(len(a) // 2, None)
    mean = lambda x: sum(x) / len(x)
    res["summary"] = dict(
        max_abs_gap_course_vs_sdpa=max(abs(x - y) for x, y in zip(a, b)),
        mean_gap_second_half_course_vs_sdpa=mean([abs(x - y) for x, y in zip(a[tail], b[tail])]),
        mean_gap_second_half_seed0_vs_seed1=mean([abs(x - y) for x, y in zip(a[tail], c[tail])]),
    )
    print(json.dumps(res["summary"], indent=1))
    (out / "capstone_h100.json").write_text(json.dumps(res, indent=1))
    try:
        plot(res, out / "capstone_h100.png")
    except Exception as e:
        print(f"plot skipped: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
