"""Which tensors are alive at the peak of naive attention's forward+backward on a GPU?
Replays the CUDA caching allocator's trace (torch.cuda.memory._record_memory_history) and
prints the blocks alive at the highest point, with the op that allocated each."""
import torch

from kernels.memory_model import standard_attention

B, H, N, d = 1, 16, 1024, 128
g = torch.Generator(device="cuda").manual_seed(0)
Q, K, V, dO = (torch.randn(B, H, N, d, device="cuda", dtype=torch.float16, generator=g) for _ in range(4))
for t in (Q, K, V):
    t.requires_grad_()
standard_attention(Q, K, V).backward(dO)  # warm-up: cuBLAS handles and workspaces
Q.grad = K.grad = V.grad = None
torch.cuda.synchronize()
torch.cuda.memory._record_memory_history(max_entries=100000)
base = torch.cuda.memory_allocated()
standard_attention(Q, K, V).backward(dO)
torch.cuda.synchronize()
snap = torch.cuda.memory._snapshot()
torch.cuda.memory._record_memory_history(enabled=None)
events = [e for trace in snap["device_traces"] for e in trace]
alive, cur, best, best_set = {}, 0, -1, {}
for e in events:
    if e["action"] == "alloc":
        alive[e["addr"]] = e
        cur += e["size"]
    elif e["action"] in ("free_requested",) and e["addr"] in alive:
        cur -= alive.pop(e["addr"])["size"]
    if cur > best:
        best, best_set = cur, dict(alive)
NN = B * H * N * N * 2
print(f"peak above the inputs: {best / 2**20:.1f} MiB = {best / NN:.3f} N×N fp16 matrices")
def where(e):
    """The frames that say who allocated a block: Python lines, autograd nodes and ATen ops."""
    out = []
    for f in e.get("frames", []):
        fn, name = f.get("filename", ""), f.get("name", "")
        if fn.endswith(".py"):
            out.append(f"{fn.rsplit('/', 1)[-1]}:{f['line']} {name}")
        elif any(k in name for k in ("autograd::generated", "at::native::", "torch::autograd::", "at::_ops::")):
            out.append(name.split("(")[0])
    seen, uniq = set(), []
    for x in out:
        if x not in seen:
            seen.add(x)
            uniq.append(x)
    return uniq[:10]


for e in sorted(best_set.values(), key=lambda e: -e["size"]):
    print(f"{e['size'] / 2**20:8.1f} MiB  " + " <- ".join(where(e)))
print("\ntimeline of the N×N-sized blocks (alloc +, free -), MiB alive after each:")
cur = 0
alive = {}
for e in events:
    if e["action"] == "alloc":
        alive[e["addr"]] = e
        cur += e["size"]
        if e["size"] >= NN // 2:
            print(f"  + {e['size'] / 2**20:6.1f}  -> {cur / 2**20:7.1f}   {' <- '.join(where(e)[:4])}")
    elif e["action"] == "free_requested" and e["addr"] in alive:
        a = alive.pop(e["addr"])
        cur -= a["size"]
        if a["size"] >= NN // 2:
            print(f"  - {a['size'] / 2**20:6.1f}  -> {cur / 2**20:7.1f}   {' <- '.join(where(e)[:4])}")
