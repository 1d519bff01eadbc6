"""benchmarks/bench_train.py on a CPU: a tiny model, tiny contexts, one step each."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train", ROOT / "benchmarks" / "bench_train.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_bench_train_runs_on_cpu(bench, tmp_path, capsys):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = bench.main(["--device", "cpu", "--tiny", "--contexts", "16,32", "--tokens-per-step", "64",
                           "--variants", "tda,softmax", "--compile-contexts", "", "--warmup", "1", "--steps", "1",
                           "--json", str(tmp_path / "b.json")])
    finally:
        torch.set_num_threads(n)
    assert [(r.context, r.batch, r.variant) for r in rows] == [
        (16, 4, "tda"), (16, 4, "softmax"), (32, 2, "tda"), (32, 2, "softmax")]
    assert all(r.tok_s > 0 and r.mode == "eager" and 0 < r.host_ms for r in rows)
    data = json.loads((tmp_path / "b.json").read_text())
    assert len(data["rows"]) == 4 and data["tokens_per_step"] == 64
    out = capsys.readouterr().out
    by = {(r.context, r.variant): r.tok_s for r in rows}
    assert "| 32 | 2 | eager |" in out and f"{by[32, 'tda'] / by[32, 'softmax']:.2f}x" in out


def test_bench_train_rejects_bad_contexts(bench):
    with pytest.raises(SystemExit, match="contexts"):
        bench.main(["--device", "cpu", "--tiny", "--contexts", "48", "--tokens-per-step", "64"])
    assert bench.parse_ints("1024,4k") == [1024, 4096]


def test_bench_train_without_parts(bench, tmp_path, monkeypatch):
    """--without runs the step with the named parts plain (the full-logits loss: the model is asked for its
    logits) and restores the layers' fused loaders afterwards; an unknown part is refused by name."""
    import tda.layers.common as common
    from tda.models.gpt import GPT

    calls, real = [], GPT.forward
    monkeypatch.setattr(GPT, "forward", lambda self, *a, **k: calls.append(
        (k.get("return_logits"), common._fused_rms_norm() is None, common._fused_project_rope() is None)) or
        real(self, *a, **k))
    loaders = common._fused_rms_norm, common._fused_project_rope
    bench.main(["--device", "cpu", "--tiny", "--contexts", "16", "--tokens-per-step", "32", "--variants", "tda",
                "--compile-contexts", "", "--warmup", "1", "--steps", "1", "--json", str(tmp_path / "b.json"),
                "--without", "chunked-loss,fused-norm,fused-projection"])
    assert calls and all(c == (True, True, True) for c in calls)  # during the run: all three plain
    assert (common._fused_rms_norm, common._fused_project_rope) == loaders
    assert json.loads((tmp_path / "b.json").read_text())["without"] == ["chunked-loss", "fused-norm",
                                                                        "fused-projection"]
    calls.clear()
    bench.main(["--device", "cpu", "--tiny", "--contexts", "16", "--tokens-per-step", "32", "--variants", "tda",
                "--compile-contexts", "", "--warmup", "1", "--steps", "1"])
    assert calls and all(c[0] is False for c in calls)
    with pytest.raises(SystemExit, match="--without: unknown part 'loss'"):
        bench.main(["--device", "cpu", "--tiny", "--without", "loss"])


def test_bench_train_activation_checkpoint(bench, tmp_path, monkeypatch):
    """--activation-checkpoint K sets every K-th block of each timed model to recompute, and the JSON says so."""
    from tda.models.gpt import GPT
    seen, real = [], GPT.set_activation_checkpointing
    monkeypatch.setattr(GPT, "set_activation_checkpointing", lambda self, k: seen.append(k) or real(self, k))
    bench.main(["--device", "cpu", "--tiny", "--contexts", "16", "--tokens-per-step", "32", "--variants",
                "tda,softmax", "--compile-contexts", "", "--warmup", "1", "--steps", "1", "--activation-checkpoint",
                "1", "--json", str(tmp_path / "b.json")])
    assert seen == [1, 1]
    assert json.loads((tmp_path / "b.json").read_text())["activation_checkpoint"] == 1


def test_bench_train_kernel_categories(bench):
    cat = bench.kernel_category
    assert cat("attention_fwd_kernel") == cat("attention_bwd_kernel") == "attention"
    assert cat("cudnn_generated_fort_native_sdpa_sm90_flash_fprop") == "attention"
    assert cat("nvjet_sm90_tst_192x192_64x4_2x1_v_bz_coopB_TNN") == "gemm"
    assert cat("_ce_row_kernel") == "loss" and cat("_rms_norm_bwd_kernel") == "rms norm"
    assert cat("triton_poi_fused__to_copy_add_0") == "inductor fused"
    assert cat("triton_poi_fused_add_mul_neg_threshold_attention_fwd_transpose_2") == "inductor fused"
    assert cat("void at::native::unrolled_elementwise_kernel<at::native::CUDAFunctor_add>") == "elementwise"
    assert cat("something_new") == "other"
    text = bench.category_table({"tda": {"gemm": 3.0, "attention": 1.0}, "softmax": {"gemm": 2.5, "loss": 0.5}})
    lines = text.splitlines()
    assert lines[0] == "| kernels | tda ms | softmax ms |"
    assert lines[2] == "| gemm | 3.00 | 2.50 |"  # the largest category first
    assert lines[-1] == "| total | 4.00 | 3.00 |"


def test_bench_train_profiles_several_variants(bench, capsys):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bench.main(["--device", "cpu", "--tiny", "--contexts", "16", "--tokens-per-step", "32", "--variants", "tda",
                    "--compile-contexts", "", "--warmup", "1", "--steps", "1", "--profile", "16",
                    "--profile-variant", "tda,softmax"])
    finally:
        torch.set_num_threads(n)
    out = capsys.readouterr().out
    assert "one eager tda step at context 16" in out and "one eager softmax step at context 16" in out
    with pytest.raises(SystemExit, match="--profile-variant: unknown variant 'nope'"):
        bench.main(["--device", "cpu", "--tiny", "--contexts", "16", "--profile-variant", "nope"])


def test_step_over_training_runs_on_cpu(bench, tmp_path, capsys):
    """benchmarks/step_over_training.py: a tiny model trained on the bundled corpus with checkpoints every 6
    steps; the loss falls (real windows, shifted targets), every checkpoint has each variant's tokens/s, and
    the JSON, the plot and the table come out."""
    sys.path.insert(0, str(ROOT / "benchmarks"))  # the script imports bench_train as its neighbour
    try:
        path = ROOT / "benchmarks" / "step_over_training.py"
        spec = importlib.util.spec_from_file_location("step_over_training", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        points = mod.main(["--device", "cpu", "--tiny", "--contexts", "32", "--tokens-per-step", "128",
                           "--steps", "12", "--every", "6", "--time-steps", "1", "--warmup", "1", "--lr", "1e-2",
                           "--lr-warmup", "1", "--json", str(tmp_path / "o.json"), "--plot", str(tmp_path / "o.png")])
    finally:
        torch.set_num_threads(n)
    assert [(p.variant, p.step) for p in points] == [("tda", 1), ("tda", 7), ("tda", 13),
                                                     ("softmax", 1), ("softmax", 7), ("softmax", 13)]
    assert all(p.tok_s > 0 and p.context == 32 for p in points)
    for v in ("tda", "softmax"):
        first, last = [p.loss for p in points if p.variant == v][::2]
        assert last < first - 0.3, (v, first, last)
    assert len(json.loads((tmp_path / "o.json").read_text())["points"]) == 6
    assert (tmp_path / "o.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    last = {p.variant: p.tok_s for p in points if p.step == 13}
    assert f"| 32 | 13 |" in out and f"{last['tda'] / last['softmax']:.2f}x" in out


def test_step_over_training_bad_arguments(bench):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import step_over_training as mod
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    with pytest.raises(SystemExit):
        mod.main(["--device", "cpu", "--tiny", "--variants", "tda,flash"])
    with pytest.raises(SystemExit):
        mod.main(["--device", "cpu", "--tiny", "--every", "0"])
