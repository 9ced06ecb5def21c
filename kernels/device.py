"""Where code runs: the one place that decides.

With a CUDA device, Triton kernels compile for it and the CUDA C++ sources load through
torch.utils.cpp_extension. Without one, Triton kernels run under the Triton interpreter, which
must be switched on (TRITON_INTERPRET=1) *before* triton is imported; this module does that
the first time `kernels` is imported and says so once. CUDA C++ can still be compile-checked
with nvcc when nvcc is on the PATH.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys

import torch

#: True when torch sees a CUDA GPU.
HAS_CUDA: bool = torch.cuda.is_available()

#: True when the triton package is installed (it has no wheels for macOS or Windows).
HAS_TRITON: bool = importlib.util.find_spec("triton") is not None

if not HAS_CUDA and HAS_TRITON:
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        print(
            "kernels: triton was imported before kernels without TRITON_INTERPRET=1 and there is no "
            "CUDA device; import kernels first (or set TRITON_INTERPRET=1) to run Triton kernels "
            "on the CPU.",
            file=sys.stderr,
        )
    os.environ.setdefault("TRITON_INTERPRET", "1")

#: True when Triton kernels run under the interpreter (NumPy on the CPU, slow, for small shapes).
TRITON_INTERPRET: bool = HAS_TRITON and os.environ.get("TRITON_INTERPRET") == "1"

#: Path of nvcc, or None.
NVCC: str | None = shutil.which("nvcc") or (
    os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
    if os.environ.get("CUDA_HOME") and os.path.exists(os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc"))
    else None
)

_announced = False


def announce() -> None:
    """Print, once per process, where the kernels will run."""
    global _announced
    if _announced:
        return
    _announced = True
    print(f"kernels: {describe()}", file=sys.stderr)


def describe() -> str:
    """One line: the device, and how Triton and CUDA C++ code will run on it."""
    if HAS_CUDA:
        name = torch.cuda.get_device_name()
        triton = "compiled for the GPU" if HAS_TRITON else "not installed"
        return f"CUDA device {name}; Triton kernels {triton}; CUDA C++ kernels run."
    if HAS_TRITON:
        triton = "run under the Triton interpreter (CPU, small shapes only)"
    else:
        triton = "unavailable (triton has no wheel for this platform); Triton cells skip"
    cuda = "compile-checked with nvcc" if NVCC else "not built (no nvcc found)"
    return f"no CUDA device; Triton kernels {triton}; CUDA C++ sources {cuda}."


def default_device() -> torch.device:
    """The device tensors for kernels should live on: cuda when present, else cpu."""
    return torch.device("cuda" if HAS_CUDA else "cpu")


def require_triton(what: str = "this Triton kernel") -> None:
    """Raise a clear error when triton is missing."""
    if not HAS_TRITON:
        raise RuntimeError(f"{what} needs the triton package, which is not installed on this platform.")


def require_cuda(what: str = "this kernel") -> None:
    """Raise a clear error when no CUDA device is present."""
    if not HAS_CUDA:
        raise RuntimeError(f"{what} needs a CUDA GPU; none is present ({describe()})")


def skip_reason_no_triton(what: str = "this cell") -> str:
    """The visible message a notebook cell prints when it skips for lack of triton."""
    return f"SKIPPED: {what} needs triton, which has no wheel for this platform; read the kernel's source instead."


def skip_reason_no_cuda(what: str = "this cell") -> str:
    """The visible message a notebook cell prints when it skips for lack of a GPU."""
    return f"SKIPPED: {what} needs a CUDA GPU and none is present. The recorded H100 result is shown instead."
