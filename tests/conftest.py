import os

import torch

# The fused Triton kernels run on a CPU only under Triton's interpreter, and triton reads this when the
# kernels are defined: set it before any test module imports them (tests/test_triton_kernels.py).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
