"""Working around a crash between TensorFlow and Triton, so that Keras users can import in any order.

With TensorFlow already loaded, importing Triton (which ``torch._dynamo``, and through it
torchvision, imports when it is installed: the CUDA builds of torch ship it) kills the interpreter
with a segmentation fault (seen with torch 2.14 / Triton 3.8 / TensorFlow 2.21; both bundle LLVM).
Triton only compiles GPU kernels; when TensorFlow is in the process first, resnexus hides it, and
torch carries on without it (``torch.utils._triton.has_triton_package()`` is then False).
"""

from __future__ import annotations

import sys

__all__ = ["hide_triton_after_tensorflow"]


def hide_triton_after_tensorflow() -> bool:
    """Make ``import triton`` fail cleanly if TensorFlow is loaded and Triton is not; True if it did."""
    if "tensorflow" in sys.modules and "triton" not in sys.modules:
        sys.modules["triton"] = None  # `import triton` now raises ImportError instead of crashing
        return True
    return False
