import json
import os
import subprocess
import sys

import pytest
import torch

# The fused Triton kernels run on a CPU only under Triton's interpreter, and triton reads this when the
# kernels are defined: set it before any test module imports them (tests/test_triton_kernels.py).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def needs_interpreter():
    """Skip a test that runs the fused kernels on CPU tensors (or in fp64) under Triton's interpreter, where it is
    off: on a GPU machine, whose CUDA tests and benchmarks/check_*.py run the kernels for real."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("runs the kernels on CPU tensors: needs TRITON_INTERPRET=1 (on a GPU machine the CUDA tests "
                    "and benchmarks/check_*.py check the kernels)")


@pytest.fixture
def interpreter():
    """A test's fixture form of needs_interpreter()."""
    needs_interpreter()


# A 1-layer run of 4 steps on the bundled corpus: the training config the CLI tests start from.
TINY_RUN_YAML = """
data_dir: {data}
out_dir: {out}
model: {{vocab_size: 4096, block_size: 32, n_layer: 1, n_head: 2, n_embd: 32}}
batch_size: 4
max_steps: 4
warmup_steps: 1
eval_interval: 2
eval_iters: 1
log_interval: 2
ckpt_interval: 2
device: cpu
progress: false
"""


# `tda compare` on a micro model: a few steps of two variants on the bundled corpus (tests/test_compare.py,
# tests/test_claims.py); format with data, out, seed, max_steps, ckpt_interval, eval_interval, variants.
MICRO_COMPARE_YAML = """\
data_dir: {data}
out_dir: {out}
seed: {seed}
batch_size: 2
max_steps: {max_steps}
warmup_steps: 1
eval_interval: {eval_interval}
eval_iters: 1
log_interval: 1
ckpt_interval: {ckpt_interval}
progress: false
device: cpu
model:
  vocab_size: 4096
  block_size: 32
  n_layer: 1
  n_head: 2
  n_embd: 32
compare:
  variants: [{variants}]
  stats_seqs: 1
  multiple_of: 1
"""


def micro_compare_yaml(data, out, *, seed=1337, max_steps=4, ckpt_interval=2, eval_interval=2,
                       variants="softmax, rela") -> str:
    return MICRO_COMPARE_YAML.format(data=data, out=out, seed=seed, max_steps=max_steps, ckpt_interval=ckpt_interval,
                                     eval_interval=eval_interval, variants=variants)


@pytest.fixture(scope="session")
def tiny_run_yaml():
    return TINY_RUN_YAML


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and far faster when the CPU is shared (no OpenMP spin-waits)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def bundled_dir(tmp_path_factory):
    """The bundled corpus slice, prepared once per test session."""
    from tda.data import ensure_bundled_data
    return ensure_bundled_data(tmp_path_factory.mktemp("data") / "bundled")


def has_ptxas() -> bool:
    """Whether this Triton ships the NVIDIA backend's ptxas (kernels then compile for sm_90 with no GPU)."""
    try:
        import triton
    except ImportError:
        return False
    return os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas"))


def run_compiled(code: str, timeout: int = 600) -> dict:
    """Run `code` in a subprocess with TRITON_INTERPRET unset (under the interpreter @triton.jit builds no
    compilable kernels) and this checkout's src first on the path; returns the JSON it prints after
    "RESULT " on its last such line. A non-zero exit fails the calling test with the subprocess's stderr."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    src = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "src"))
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][len("RESULT "):])


def torch_rope(x, cos, sin):
    """Rotate-half RoPE as torch ops: the fused kernels' oracle (cos / sin broadcastable to x)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin
