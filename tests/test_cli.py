"""The `tda` command: train / sample / info / demo, plugin registration, and clear errors on bad input."""
import json
import os
import subprocess
import sys

import pytest

from tda.cli import build_parser, main
from tda.train.config import load_config
from tda.train.demo import demo_config

pytestmark = pytest.mark.usefixtures("one_thread")


ROOT = os.path.join(os.path.dirname(__file__), "..")


@pytest.fixture(scope="module")
def tiny_config(bundled_dir, tiny_run_yaml, tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    p = d / "tiny.yaml"
    p.write_text(tiny_run_yaml.format(data=bundled_dir, out=d / "run"))
    return p


@pytest.fixture(scope="module")
def ckpt(tiny_config):
    assert main(["train", str(tiny_config)]) == 0
    return str(load_config(tiny_config).out_dir + "/last.pt")


def test_train_prints_summary_and_resumes(tiny_config, ckpt, capsys):
    capsys.readouterr()
    assert main(["train", str(tiny_config), "--resume", "--set", "max_steps=6"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "step 6" in out and "last.pt" in out


def test_info(ckpt, capsys):
    assert main(["info", ckpt]) == 0
    out = capsys.readouterr().out
    assert "step" in out and "parameters" in out and "val loss" in out and "tda" in out
    assert main(["info", ckpt, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["step"] >= 4 and info["params"] > 0 and info["val_loss"] > 0
    assert info["model_config"]["n_layer"] == 1 and info["has_optimizer"]


def test_sample_is_seeded(ckpt, capsys):
    args = ["sample", ckpt, "--prompt", "The king", "--max-new-tokens", "8", "--seed", "3"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.startswith("The king") and len(first) > len("The king")
    assert main(args) == 0
    assert capsys.readouterr().out == first
    assert main(["sample", ckpt, "--max-new-tokens", "4", "--temperature", "0", "--num-samples", "2"]) == 0
    assert capsys.readouterr().out.count("--- sample") == 2


def test_sample_decodes_from_a_cuda_graph_by_default_on_cuda(ckpt, monkeypatch):
    """--cuda-graph defaults to on with --device cuda and the cache, off on the CPU or with --no-cache;
    --no-cuda-graph turns it off. (The graph path itself is tested on CUDA in test_generate.py.)"""
    import tda.cli as cli
    import tda.models.checkpoint as checkpoint
    import tda.models.generate as generate

    real_load = checkpoint.load_checkpoint
    seen = []
    monkeypatch.setattr(cli, "_check_device", lambda device: None)
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda path, device="cpu": real_load(path, device="cpu"))
    monkeypatch.setattr(generate, "sample_loop", lambda *a, **kw: seen.append(kw["cuda_graph"]) or [])
    base = ["sample", ckpt, "--max-new-tokens", "2"]
    for extra, want in ((["--device", "cuda"], True), (["--device", "cuda", "--no-cuda-graph"], False),
                        (["--device", "cuda", "--no-cache"], False), ([], False), (["--no-cuda-graph"], False)):
        assert main(base + extra) == 0
        assert seen.pop() is want, extra


def test_sample_streams_with_and_without_the_cache(ckpt, capsys):
    """Greedy text is the same through the KV cache and with --no-cache; tokens/s goes to stderr."""
    base = ["sample", ckpt, "--prompt", "The", "--max-new-tokens", "6", "--temperature", "0"]
    assert main(base) == 0
    cached = capsys.readouterr()
    assert main(base + ["--no-cache"]) == 0
    uncached = capsys.readouterr()
    assert cached.out == uncached.out and cached.out.startswith("The")
    assert "6 tokens in" in cached.err and "tokens/s" in cached.err and "tokens/s" not in cached.out
    assert main(base + ["--temperature", "0.8", "--top-p", "0.9", "--top-k", "0", "--stop-at-eot"]) == 0
    assert capsys.readouterr().out.startswith("The")


@pytest.mark.parametrize("args, msg", [
    (["sample", "/nonexistent/x.pt"], "not found"),
    (["info", "/nonexistent/x.pt"], "not found"),
    (["train", "/nonexistent/c.yaml"], "not found"),
    (["demo", "--attention", "nope"], "--attention"),
    (["sample", "/nonexistent/x.pt", "--cuda-graph"], "--cuda-graph needs --device cuda"),
    (["sample", "/nonexistent/x.pt", "--cuda-graph", "--no-cache", "--device", "cuda"], "--no-cache"),
])
def test_bad_arguments_exit_nonzero_with_message(args, msg, capsys):
    assert main(args) == 2
    assert msg in capsys.readouterr().err


@pytest.mark.parametrize("args, msg", [
    (["sample", "x.pt", "--max-new-tokens", "0"], "--max-new-tokens: must be > 0"),
    (["sample", "x.pt", "--temperature", "-1"], "--temperature: must be >= 0"),
    (["sample", "x.pt", "--top-p", "1.01"], "--top-p: must be in (0, 1]"),
    (["sample", "x.pt", "--device", "gpu"], "--device: must be cpu, cuda or cuda:N"),
    (["demo", "--steps", "0"], "--steps: must be > 0"),
    (["eval", "x.pt", "--out", "o", "--trials", "many"], "--trials: expected an integer"),
])
def test_bad_values_are_rejected_while_parsing(args, msg, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_train_unknown_key_is_named(tiny_config, capsys):
    assert main(["train", str(tiny_config), "--set", "model.n_layr=2"]) == 2
    assert "model.n_layr" in capsys.readouterr().err
    assert main(["train", str(tiny_config), "--set", "lr"]) == 2
    assert "key=value" in capsys.readouterr().err


def test_argparse_errors_exit_2(capsys):
    for args in (["sample"], ["train"], ["frobnicate"], ["sample", "x.pt", "--max-new-tokens", "many"]):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 2
    assert "usage" in capsys.readouterr().err
    assert main([]) == 2   # no command: help, non-zero


def test_console_entry_point_exit_code(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tda.cli", "info", str(tmp_path / "missing.pt")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "tda info: error" in r.stderr


def test_every_subcommand_is_registered():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {"demo", "train", "sample", "export", "info", "eval", "analyze", "compare", "data"}


def test_demo_config_comes_from_the_package_yaml():
    cfg = demo_config()
    assert cfg.model.attention == "tda" and cfg.out_dir == "runs/demo-tda" and cfg.max_steps == 250
    cfg = demo_config("softmax", out="x", steps=30)
    assert cfg.model.attention == "softmax" and cfg.max_steps == 30 and cfg.out_dir == "x"
    assert cfg.eval_interval == 10 and cfg.warmup_steps == 3
    # configs/demo.yaml is the same file (a link), so `tda train configs/demo.yaml` runs the demo
    shipped = load_config(os.path.join(ROOT, "configs", "demo.yaml"), ["out_dir=runs/demo-tda"])
    assert shipped == demo_config()


def test_demo_end_to_end_small(bundled_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--steps", "2", "--out", str(out), "--data-dir", str(bundled_dir),
               "--set", "model.block_size=32", "--set", "model.n_layer=1", "--set", "model.n_embd=32",
               "--set", "batch_size=2", "--set", "eval_iters=1", "--set", "progress=false"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "validation loss" in text and "exact zeros" in text and "last.pt" in text
    res = json.loads((out / "demo.json").read_text())
    assert res["steps"] == 2 and 0.5 < res["exact_zero_fraction"] <= 1.0
    for f in ("last.pt", "best.pt", "metrics.jsonl", "sample.txt"):
        assert (out / f).is_file(), f
