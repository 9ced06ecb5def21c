"""FlashAttention from first principles: the kernels the course builds.

    import kernels
    O = kernels.scaled_dot_product_attention(q, k, v, is_causal=True)   # torch's SDPA interface
    mha = kernels.FlashMultiheadAttention(embed_dim=512, num_heads=8)     # nn.MultiheadAttention's

Importing `kernels` first decides where code runs (kernels.device): with no CUDA device,
Triton kernels run under the Triton interpreter. Modules, one idea each, in lesson order:

    device          where code runs: CUDA, or the Triton interpreter on a CPU
    reference       naive attention in the SDPA convention: the ground truth
    validation      input checks with errors that name the argument
    hardware        memory hierarchy of real GPUs (sizes, bandwidths, latencies), each with its source
    memory_model    HBM bytes, FLOPs, block sizes and peak memory of attention; measuring peak memory
    online_softmax  the running state (m, ℓ), its merge, softmax in three/two/one passes, online
                    attention for one row
    tiled           the tiled forward in PyTorch, FA1 and FA2 loop orders
    triton_forward  the Triton forward kernel of lesson 03
    gluon_forward   the forward with warp specialisation, in Gluon, for Hopper (flash_attention's at d = 64, 128)
    cuda_kernels    the numbered CUDA C++ kernels (cuda/*.cu): loader, wrappers, nvcc compile check
    tiled_backward  the tiled backward in PyTorch, as an autograd.Function
    triton_backward the Triton backward kernels of lesson 04, and flash_attention (autograd)
    triton_resources registers, spills and shared memory of the Triton kernels compiled for the H100,
                    without a GPU
    gpt             a small GPT whose attention is pluggable (lesson 04's capstone)
    flex_patterns   score_mod / mask_mod patterns for FlexAttention and the mini-Flex
    mini_flex       the course's Triton kernels with score_mod, mask_mod and block skipping
    triton_sdpa     the general Triton kernels behind the API: masks, dropout, GQA
    api             scaled_dot_product_attention (torch's SDPA interface) and AttentionConfig
    modules         FlashMultiheadAttention, a drop-in for torch.nn.MultiheadAttention
    bench           `python -m kernels.bench`: TFLOP/s and memory against SDPA and FlexAttention
    grading         graders, exercises, the notebook generator and the command-line grader

Submodules that need triton import it only when used, so `import kernels` stays cheap and works
where triton has no wheel.
"""

from . import device  # noqa: F401  (first: sets TRITON_INTERPRET before anything imports triton)
from . import online_softmax, reference, validation  # noqa: F401
from .api import AttentionConfig, scaled_dot_product_attention  # noqa: F401
from .memory_model import measure_peak_bytes, predicted_peak_bytes  # noqa: F401
from .modules import FlashMultiheadAttention  # noqa: F401
from .reference import attention as reference_attention  # noqa: F401

if not device.HAS_CUDA:
    device.announce()  # says once, on stderr, that Triton runs under the interpreter here

__all__ = [
    "scaled_dot_product_attention",
    "FlashMultiheadAttention",
    "AttentionConfig",
    "predicted_peak_bytes",
    "measure_peak_bytes",
    "reference_attention",
    "device",
    "reference",
    "validation",
    "online_softmax",
]
