"""Trainer: config loading, LR schedule, loss falls on the bundled corpus, exact resume, atomic checkpoints,
torchrun (2 CPU processes, gloo), exact-zero fraction."""
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tda.models.config import GPTConfig
from tda.models.gpt import GPT
from tda.train import checkpoint as ckpt_mod
from tda.models.checkpoint import load_checkpoint, read_checkpoint
from tda.train.checkpoint import save_checkpoint
from tda.train.config import TrainConfig, apply_overrides, load_config, parse_value
from tda.train.loop import train
from tda.train.schedule import lr_at

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(data_dir, out_dir, **kw):
    """A 2-layer TDA model on 32-token windows: a few steps a second on a CPU."""
    d = {"data_dir": str(data_dir), "out_dir": str(out_dir),
         "model": {"vocab_size": 4096, "block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32},
         "batch_size": 8, "max_steps": 12, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 3,
         "eval_interval": 6, "eval_iters": 2, "log_interval": 3, "ckpt_interval": 6, "seed": 0,
         "device": "cpu", "progress": False}
    model = kw.pop("model", {})
    d.update(kw)
    d["model"].update(model)
    return TrainConfig.from_dict(d)


# --- config ---------------------------------------------------------------------------------------
def test_config_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("max_steps: 7\nlr: 1.0e-3\nbetas: [0.8, 0.9]\nmodel:\n  n_layer: 3\n  attention: softmax\n")
    cfg = load_config(p, ["model.n_embd=96", "batch_size=4", "compile=true", "lr_decay_steps=null"])
    assert cfg.max_steps == 7 and cfg.lr == 1e-3 and cfg.betas == (0.8, 0.9)
    assert cfg.model.n_layer == 3 and cfg.model.attention == "softmax" and cfg.model.n_embd == 96
    assert cfg.batch_size == 4 and cfg.compile is True and cfg.lr_decay_steps is None
    # round trip through the dict a checkpoint stores
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_config_toml(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('max_steps = 5\nbetas = [0.9, 0.99]\n[model]\nn_layer = 1\nattention = "tra"\n')
    cfg = load_config(p)
    assert cfg.max_steps == 5 and cfg.betas == (0.9, 0.99) and cfg.model.attention == "tra"


@pytest.mark.parametrize("name", ["demo.yaml", "tiny-cpu.yaml", "tiny-cpu-softmax.toml", "gpt2-small-tda.yaml",
                                  "gpt2-small-softmax.yaml"])
def test_shipped_configs_load(name):
    root = os.path.join(os.path.dirname(__file__), "..", "configs")
    cfg = load_config(os.path.join(root, name))
    assert cfg.max_steps > 0


def test_gpt2_small_configs_are_162m():
    from tda.models.params import count_params
    root = os.path.join(os.path.dirname(__file__), "..", "configs")
    for name in ("gpt2-small-tda.yaml", "gpt2-small-softmax.yaml"):
        n = count_params(load_config(os.path.join(root, name)).model, non_embedding=False)
        assert abs(n - 162.2e6) < 0.1e6, (name, n)


@pytest.mark.parametrize("text, key", [("lrr: 1\n", "lrr"), ("model:\n  n_layr: 2\n", "model.n_layr")])
def test_config_unknown_key_is_named(tmp_path, text, key):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ValueError, match=f"'{key}'"):
        load_config(p)


@pytest.mark.parametrize("override, key", [("warmup=3", "warmup"), ("model.heads=2", "model.heads"),
                                           ("lr.x=2", "lr.x")])
def test_override_unknown_key_is_named(override, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        apply_overrides({}, [override])


def test_config_bad_values():
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="dtype"):
        TrainConfig(dtype="fp8")
    with pytest.raises(ValueError, match="min_lr"):
        TrainConfig(lr=1e-3, min_lr=1e-2)
    with pytest.raises(ValueError, match="compile_mode"):
        TrainConfig(compile_mode="fastest")
    with pytest.raises(ValueError, match="attn_stats_seqs"):
        TrainConfig(attn_stats_seqs=-1)
    for bad in (-1, True, "full"):
        with pytest.raises(ValueError, match="activation_checkpoint"):
            TrainConfig(activation_checkpoint=bad)
    with pytest.raises(ValueError, match="attn_stats_seqs: not supported with parallel=fsdp"):
        TrainConfig(attn_stats_seqs=2, parallel="fsdp")
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides({}, ["lr"])
    with pytest.raises(ValueError, match=r"\.yaml"):
        load_config(__file__)


def test_parse_value():
    assert parse_value("3") == 3 and parse_value("1e-3") == 1e-3 and parse_value("true") is True
    assert parse_value("null") is None and parse_value("[1, 2]") == [1, 2] and parse_value("softmax") == "softmax"


def test_schedule():
    kw = dict(lr=1.0, min_lr=0.1, warmup_steps=10, decay_steps=110)
    assert lr_at(0, **kw) == pytest.approx(0.1) and lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.55)          # half-way down the cosine
    assert lr_at(110, **kw) == pytest.approx(0.1) and lr_at(500, **kw) == pytest.approx(0.1)
    lrs = [lr_at(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


# --- training -------------------------------------------------------------------------------------
def test_loss_falls_on_bundled_corpus(bundled_dir, tmp_path):
    cfg = tiny(bundled_dir, tmp_path / "run", max_steps=40, eval_interval=40, eval_iters=4, ckpt_interval=0,
               log_interval=10, lr=1e-2, min_lr=1e-3, warmup_steps=5, model={"n_embd": 64})
    s = train(cfg)
    # an untrained model sits at ln(4096) = 8.32; 40 tiny steps learn unigram-and-better statistics (~6.8)
    assert s["val_loss"] < math.log(4096) - 1.2, s["val_loss"]
    rows = [json.loads(line) for line in open(s["metrics"])]
    train_rows = [r for r in rows if "train_loss" in r]
    assert train_rows[-1]["train_loss"] < math.log(4096) - 1.0
    assert {"step", "train_loss", "lr", "tokens_per_s", "elapsed"} <= set(train_rows[0])
    assert any("val_loss" in r for r in rows)
    # last.pt is written at the end, best.pt at the best evaluation
    assert os.path.isfile(s["last"]) and os.path.isfile(s["best"])


@pytest.mark.parametrize("attention", ["tda", "softmax"])
def test_attention_trend_is_logged_at_every_evaluation(bundled_dir, tmp_path, attention):
    """attn_stats_seqs: sink and sparsity statistics ride along with each validation row, on the same fixed
    windows every time, and the trained model is left as training left it."""
    from tda.eval.attention_stats import collect_attention_stats
    from tda.train.loop import stats_batch
    cfg = tiny(bundled_dir, tmp_path / "run", max_steps=8, eval_interval=4, ckpt_interval=0, attn_stats_seqs=2,
               data={"bos": True}, model={"attention": attention})
    s = train(cfg)
    vals = [json.loads(line) for line in open(s["metrics"]) if "val_loss" in line]
    assert [r["step"] for r in vals] == [4, 8]
    for r in vals:
        assert 0.0 <= r["attn_sink_1_share"] <= 1.0 and 0.0 <= r["attn_alpha_1_max"] <= 1.0
        assert r["attn_first_token_sink_ratio"] > 0 and r["attn_entropy_nats"] >= 0
        assert (r["attn_exact_zero_fraction"] > 0.5) == (attention == "tda")   # TDA's threshold zeros
        # a silent head has >= 99% all-zero rows, so the silent share is at most all-zero rows / 0.99
        assert 0.0 <= 0.99 * r["attn_silent_head_fraction"] <= r["attn_all_zero_row_fraction"] + 1e-6
        if attention == "softmax":                                            # softmax never abstains
            assert r["attn_silent_head_fraction"] == r["attn_all_zero_row_fraction"] == 0.0
    from tda.data.dataset import load_meta
    ids = stats_batch(cfg, 2, "cpu")
    assert ids.shape == (2, 32) and (ids[:, 0] == int(load_meta(bundled_dir)["eot_id"])).all()  # bos first
    again = collect_attention_stats(s["model"], ids).summary()                      # the final model, same windows
    assert again["first_token_sink_ratio"] == pytest.approx(vals[-1]["attn_first_token_sink_ratio"], rel=1e-4)
    assert again["silent_head_fraction"] == pytest.approx(vals[-1]["attn_silent_head_fraction"], abs=1e-6)
    plain = [json.loads(line) for line in open(train(tiny(bundled_dir, tmp_path / "off", max_steps=4,
                                                          eval_interval=4, ckpt_interval=0))["metrics"])]
    assert not any(k.startswith("attn_") for r in plain for k in r)


def test_attention_trend_reads_the_bundled_corpus_by_name(bundled_dir, tmp_path, monkeypatch):
    """data_dir "bundled" (tda demo's config) resolves to the prepared cache for the statistics' windows too."""
    monkeypatch.setenv("TDA_DATA_DIR", str(bundled_dir.parent))
    s = train(tiny("bundled", tmp_path / "run", max_steps=2, eval_interval=2, ckpt_interval=0, attn_stats_seqs=2))
    vals = [json.loads(line) for line in open(s["metrics"]) if "val_loss" in line]
    assert vals and "attn_first_token_sink_ratio" in vals[-1]


def test_exact_resume(bundled_dir, tmp_path):
    """N steps straight == N/2, 'kill', resume to N: bit-identical parameters, optimizer state and losses
    (with dropout on and gradient accumulation, so RNG and micro-batch indexing are exercised)."""
    kw = dict(grad_accum=2, model={"dropout": 0.1})
    a = train(tiny(bundled_dir, tmp_path / "a", **kw))
    train(tiny(bundled_dir, tmp_path / "b", **kw), stop_after=6)   # last.pt at step 6, then "killed"
    assert read_checkpoint(tmp_path / "b" / "last.pt")["step"] == 6
    b = train(tiny(bundled_dir, tmp_path / "b", **kw), resume=True)
    assert b["step"] == a["step"] == 12
    sa, sb = a["model"].state_dict(), b["model"].state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert a["val_loss"] == b["val_loss"]
    oa = read_checkpoint(tmp_path / "a" / "last.pt")["optimizer"]["state"]
    ob = read_checkpoint(tmp_path / "b" / "last.pt")["optimizer"]["state"]
    for i in oa:
        for k in oa[i]:
            assert torch.equal(oa[i][k], ob[i][k])

    def losses(path):
        return [(r["step"], r.get("train_loss"), r.get("val_loss")) for r in map(json.loads, open(path))
                if not r.get("resumed")]
    assert losses(tmp_path / "a" / "metrics.jsonl") == losses(tmp_path / "b" / "metrics.jsonl")
    # the resumed run appended to the file, after a row that marks where it restarted
    rows = [json.loads(line) for line in open(tmp_path / "b" / "metrics.jsonl")]
    assert [r["step"] for r in rows if r.get("resumed")] == [6]


def test_divergence_stops_before_overwriting_the_checkpoint(bundled_dir, tmp_path, monkeypatch):
    """A NaN loss from step 5 on: the run raises at the next check (step 6), and last.pt still holds the
    finite step-3 weights."""
    from tda.models.gpt import GPT
    real, calls = GPT.forward, [0]

    def poisoned(self, input_ids, targets=None, **kw):
        out = real(self, input_ids, targets, **kw)
        if targets is None:
            return out
        calls[0] += 1
        return (out[0], out[1] * float("nan")) if calls[0] >= 5 else out

    monkeypatch.setattr(GPT, "forward", poisoned)
    with pytest.raises(FloatingPointError, match="diverged.*step 6"):
        train(tiny(bundled_dir, tmp_path / "d", ckpt_interval=3, log_interval=3, eval_interval=0))
    ck = read_checkpoint(tmp_path / "d" / "last.pt")
    assert ck["step"] == 3
    assert all(torch.isfinite(t).all() for t in ck["model"].values() if t.is_floating_point())


def test_backward_threads_option_trains_identically(bundled_dir, tmp_path):
    """backward_threads only moves the backward to another thread (CUDA); results are the same."""
    a = train(tiny(bundled_dir, tmp_path / "t0", max_steps=3, eval_interval=0, ckpt_interval=0))
    b = train(tiny(bundled_dir, tmp_path / "t1", max_steps=3, eval_interval=0, ckpt_interval=0,
                   backward_threads=True))
    for (k, x), y in zip(a["model"].state_dict().items(), b["model"].state_dict().values()):
        assert torch.equal(x, y), k


def test_activation_checkpoint_trains_identically(bundled_dir, tmp_path):
    """activation_checkpoint=1 only recomputes each block in the backward: the same weights as a plain run."""
    kw = dict(max_steps=3, eval_interval=0, ckpt_interval=0)
    a = train(tiny(bundled_dir, tmp_path / "plain", **kw))
    b = train(tiny(bundled_dir, tmp_path / "ac", activation_checkpoint=1, **kw))
    assert all(blk.gradient_checkpointing for blk in b["model"].blocks)
    for (k, x), y in zip(a["model"].state_dict().items(), b["model"].state_dict().values()):
        torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-7, msg=k)


def test_compiled_training_matches_eager(bundled_dir, tmp_path):
    """compile=true with compile_mode reduce-overhead (CUDA graphs on a GPU; on the CPU inductor alone) and
    activation checkpointing (traced into the graph) trains the model plain eager mode trains: the same losses
    up to inductor's rounding."""
    kw = dict(max_steps=3, eval_interval=0, ckpt_interval=0)
    a = train(tiny(bundled_dir, tmp_path / "e", **kw))
    b = train(tiny(bundled_dir, tmp_path / "c", compile=True, compile_mode="reduce-overhead", activation_checkpoint=1,
                   **kw))
    assert math.isfinite(b["val_loss"]) and abs(a["val_loss"] - b["val_loss"]) < 1e-3
    # weights close as a whole (elementwise, Adam's first steps move near-zero gradients by +-lr either way)
    wa = torch.cat([t.flatten() for t in a["model"].state_dict().values()])
    wb = torch.cat([t.flatten() for t in b["model"].state_dict().values()])
    assert (wa - wb).norm() / wa.norm() < 1e-3, float((wa - wb).norm() / wa.norm())


def test_compiled_packed_training_matches_eager(bundled_dir, tmp_path):
    """compile=true with pack_documents=true: the trainer builds each batch's documents on the host and the
    compiled model runs the fused kernels over their table (the interpreter on a CPU, attn_backend triton)
    through the custom ops: the losses of eager packed training, up to inductor's rounding. On a GPU machine
    the same in fp32 on CUDA, the kernels compiled."""
    pytest.importorskip("triton")
    kw = dict(max_steps=3, eval_interval=0, ckpt_interval=0, pack_documents=True, data={"bos": True},
              model={"attn_backend": "triton"})
    if os.environ.get("TRITON_INTERPRET") != "1":
        if not torch.cuda.is_available():
            pytest.skip("needs CUDA or TRITON_INTERPRET=1")
        kw.update(device="cuda", dtype="float32")
    a = train(tiny(bundled_dir, tmp_path / "e", **kw))
    b = train(tiny(bundled_dir, tmp_path / "c", compile=True, **kw))
    assert math.isfinite(b["val_loss"]) and abs(a["val_loss"] - b["val_loss"]) < 1e-3


def test_resume_without_checkpoint_starts_fresh(bundled_dir, tmp_path):
    s = train(tiny(bundled_dir, tmp_path / "r", max_steps=2, eval_interval=0, ckpt_interval=0), resume=True)
    assert s["step"] == 2


def test_head_norm_eps_of_old_checkpoints_and_resume(bundled_dir, tmp_path):
    """A checkpoint from before GPTConfig.head_norm_eps existed (no key) was trained at the old eps, 1e-6,
    and loads with it; resuming a run at another eps than its checkpoint's is an error naming the key."""
    s = train(tiny(bundled_dir, tmp_path / "o", max_steps=2, eval_interval=0, model={"head_norm_eps": 1e-6}))
    ck = torch.load(s["last"], weights_only=True)
    del ck["model_config"]["head_norm_eps"]
    torch.save(ck, s["last"])
    model, _ = load_checkpoint(s["last"])
    assert all(b.attn.head_norm.eps == 1e-6 for b in model.blocks)
    assert GPTConfig().head_norm_eps == 1e-4  # today's default differs: the fill-in matters
    with pytest.raises(ValueError, match=r"head_norm_eps=1e-06.*--set model.head_norm_eps=1e-06"):
        train(tiny(bundled_dir, tmp_path / "o", max_steps=4, eval_interval=0), resume=True)
    r = train(tiny(bundled_dir, tmp_path / "o", max_steps=3, eval_interval=0, model={"head_norm_eps": 1e-6}),
              resume=True)
    assert r["step"] == 3


def test_checkpoint_contents_and_load(bundled_dir, tmp_path):
    s = train(tiny(bundled_dir, tmp_path / "c", max_steps=3, eval_interval=0))
    ck = read_checkpoint(s["last"])
    for key in ("model", "optimizer", "step", "model_config", "train_config", "tokenizer", "rng", "data",
                "metrics", "best_val_loss"):
        assert key in ck, key
    model, tok = load_checkpoint(s["last"])
    assert isinstance(model, GPT) and not model.training
    for k, v in s["model"].state_dict().items():
        assert torch.equal(model.state_dict()[k], v)
    ids = tok.encode("To be, or not to be")
    assert tok.decode(ids) == "To be, or not to be"
    assert model(torch.tensor([ids])).shape == (1, len(ids), 4096)
    # the public entry point
    import tda
    model2, _ = tda.load_checkpoint(s["last"])
    assert torch.equal(model2.wte.weight, model.wte.weight)


def test_vocab_too_small_is_an_error(bundled_dir, tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        train(tiny(bundled_dir, tmp_path / "v", model={"vocab_size": 100}))


def test_missing_data_dir_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="meta.json"):
        train(tiny(tmp_path / "nowhere", tmp_path / "o"))


# --- atomic save ----------------------------------------------------------------------------------
def test_crash_mid_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1, "w": torch.arange(4)}, path)

    def crash(obj, f):
        f.write(b"half a checkpoint")   # the temp file is open and partly written ...
        raise OSError("disk full")       # ... when the process dies

    monkeypatch.setattr(ckpt_mod, "_serialize", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"step": 2, "w": torch.zeros(4)}, path)
    ck = torch.load(path, weights_only=True)
    assert ck["step"] == 1 and torch.equal(ck["w"], torch.arange(4))
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]   # no temp file left behind


def test_first_interrupt_saves_the_step_and_resumes_exactly(bundled_dir, tmp_path, monkeypatch):
    """A SIGINT during step 4 (Ctrl-C, `timeout --signal=INT`): the step finishes, last.pt is written at
    step 5 (ckpt_interval would not have saved there), KeyboardInterrupt follows; resuming to the end gives
    the uninterrupted run's parameters bit for bit. The previous SIGINT handler is back afterwards."""
    import signal
    import tda.train.loop as L
    kw = dict(ckpt_interval=0, eval_interval=0)
    a = train(tiny(bundled_dir, tmp_path / "a", **kw))
    real = L.lr_at

    def lr_at(step, **k):
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return real(step, **k)
    monkeypatch.setattr(L, "lr_at", lr_at)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match="stopped at step 5"):
        train(tiny(bundled_dir, tmp_path / "b", **kw))
    assert signal.getsignal(signal.SIGINT) is before
    assert read_checkpoint(tmp_path / "b" / "last.pt")["step"] == 5
    monkeypatch.setattr(L, "lr_at", real)
    b = train(tiny(bundled_dir, tmp_path / "b", **kw), resume=True)
    assert b["step"] == a["step"] == 12
    for k, t in a["model"].state_dict().items():
        assert torch.equal(t, b["model"].state_dict()[k]), k


def test_crash_mid_save_in_trainer(bundled_dir, tmp_path, monkeypatch):
    """The trainer's second checkpoint crashes: last.pt still holds the first, and resume works from it."""
    out = tmp_path / "t"
    real, calls = ckpt_mod._serialize, []

    def flaky(obj, f):
        calls.append(obj.get("step"))
        if len(calls) == 2:
            raise KeyboardInterrupt   # killed mid-save
        real(obj, f)

    monkeypatch.setattr(ckpt_mod, "_serialize", flaky)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(bundled_dir, out, eval_interval=0, ckpt_interval=3, max_steps=6))
    assert read_checkpoint(out / "last.pt")["step"] == 3
    assert [f for f in os.listdir(out) if f.endswith(".tmp")] == []
    monkeypatch.setattr(ckpt_mod, "_serialize", real)
    s = train(tiny(bundled_dir, out, eval_interval=0, ckpt_interval=3, max_steps=6), resume=True)
    assert s["step"] == 6


# --- torchrun -------------------------------------------------------------------------------------
DDP_SCRIPT = """
import os, sys, torch
from tda.train.config import load_config
from tda.train.loop import train
cfg = load_config(None, sys.argv[1:])
s = train(cfg)
torch.save(s["model"].state_dict(), os.path.join(cfg.out_dir, "rank%s.pt" % os.environ["RANK"]))
"""


def test_torchrun_two_processes(bundled_dir, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    out = tmp_path / "ddp"
    args = [f"data_dir={bundled_dir}", f"out_dir={out}", "model.vocab_size=4096", "model.block_size=32",
            "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "batch_size=4", "max_steps=4",
            "warmup_steps=1", "eval_interval=2", "eval_iters=1", "log_interval=2", "ckpt_interval=2",
            "device=cpu", "progress=false"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(script), *args], capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ck = read_checkpoint(out / "last.pt")
    assert ck["step"] == 4 and ck["data"]["world_size"] == 2 and len(ck["rng"]) == 2
    s0, s1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    for k in s0:
        assert torch.equal(s0[k], s1[k]), k
        assert torch.equal(s0[k], ck["model"][k]), k
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows if "val_loss" in r] == [2, 4]   # rank 0 alone writes metrics


# --- exact zeros ----------------------------------------------------------------------------------
def test_exact_zero_fraction():
    from tda.eval.sparsity import exact_zero_fraction
    torch.manual_seed(0)
    ids = torch.randint(0, 64, (2, 48))
    m = GPT(GPTConfig(vocab_size=64, block_size=48, n_layer=2, n_head=2, n_embd=32, attention="tda"))
    z = exact_zero_fraction(m, ids)
    assert len(z["per_layer"]) == 2 and z["causal_weights"] == 2 * 2 * 48 * 49 // 2
    assert 0.9 < z["overall"] <= 1.0   # random cosines rarely exceed the threshold
    assert all(b.attn.record_weights is False and b.attn.last_weights is None for b in m.blocks)
    # cross-check by hand on layer 0
    m.record_attention(True)
    m(ids)
    w = m.attention_weights()[0]
    m.record_attention(False)
    causal = torch.ones(48, 48, dtype=torch.bool).tril()
    assert z["per_layer"][0] == pytest.approx(float((w[..., causal] == 0).float().mean()))
    s = GPT(GPTConfig(vocab_size=64, block_size=48, n_layer=2, n_head=2, n_embd=32, attention="softmax"))
    assert exact_zero_fraction(s, ids)["overall"] == 0.0
    with pytest.raises(ValueError, match="input_ids"):
        exact_zero_fraction(s, ids[0])
