"""FlashAttention from first principles: the kernels the course builds.

Importing `kernels` first decides where code runs (kernels.device): with no CUDA device,
Triton kernels run under the Triton interpreter. Modules, one idea each:

    reference      naive attention in the SDPA convention: the ground truth
    validation     input checks with errors that name the argument
    grading        graders, exercises and the command-line grader
"""

from . import device  # noqa: F401  (first: sets TRITON_INTERPRET before anything imports triton)
from . import reference, validation  # noqa: F401
from .reference import attention as reference_attention  # noqa: F401

if not device.HAS_CUDA:
    device.announce()  # says once, on stderr, that Triton runs under the interpreter here

__all__ = ["device", "reference", "validation", "reference_attention"]
