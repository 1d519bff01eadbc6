"""FSDP2 training (parallel="fsdp"): 2 gloo ranks give the losses of one process, sharded checkpoints
resume exactly (on the same and on another number of ranks), saves are atomic, and a sharded checkpoint
consolidates into a plain model."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tda.data.dataset import ShardedBatchSampler, TokenDataset
from tda.data.global_batches import GlobalBatchSampler
from tda.models.sharded import consolidate, sharded_checkpoint_dir
from tda.train import sharded_checkpoint as sc
from tda.models.checkpoint import load_checkpoint, read_checkpoint
from tda.train.config import TrainConfig
from tda.train.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")


MODEL = {"vocab_size": 4096, "block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32}


def settings(data_dir, out_dir, **kw):
    """A 2-layer TDA model on 32-token windows, FSDP, checkpoints every 3 steps."""
    d = {"data_dir": str(data_dir), "out_dir": str(out_dir), "model": dict(MODEL),
         "batch_size": 8, "max_steps": 6, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2,
         "eval_interval": 3, "eval_iters": 2, "log_interval": 1, "ckpt_interval": 3, "seed": 0,
         "device": "cpu", "progress": False, "parallel": "fsdp"}
    d.update(kw)
    return d


def losses(out_dir):
    rows = [json.loads(line) for line in open(os.path.join(out_dir, "metrics.jsonl"))]
    return [(r["step"], r.get("train_loss"), r.get("val_loss")) for r in rows if not r.get("resumed")]


def assert_close_losses(a, b, rtol):
    assert [r[0] for r in a] == [r[0] for r in b]
    for ra, rb in zip(a, b):
        for x, y in zip(ra[1:], rb[1:]):
            assert (x is None) == (y is None)
            if x is not None:
                assert abs(x - y) <= rtol * abs(x), (ra, rb)


def assert_close_states(sa, sb, rtol):
    assert sa.keys() == sb.keys()
    for k in sa:
        err = (sa[k].float() - sb[k].float()).norm() / sa[k].float().norm().clamp_min(1e-12)
        assert err <= rtol, (k, float(err))


# --- data order -----------------------------------------------------------------------------------
def test_global_batches_do_not_depend_on_world_size(bundled_dir):
    ds = TokenDataset(bundled_dir / "train.bin", "uint16", 16)

    def windows(world, batch, accum):
        out = []
        for r in range(world):
            s = GlobalBatchSampler(ds, batch, seed=3, rank=r, world_size=world, grad_accum=accum)
            out += [int(v) for m in range(accum) for v in s.starts(5, m)]
        return sorted(out)
    one = windows(1, 8, 1)
    assert windows(2, 4, 1) == windows(4, 1, 2) == windows(1, 4, 2) == one
    s = GlobalBatchSampler(ds, 8, seed=3)
    assert list(s.starts(5)) != list(s.starts(6))          # a new step, new windows
    # one rank, no accumulation: the one-process order of ShardedBatchSampler, so a one-process run trains on
    # the same batches with parallel=ddp or fsdp
    assert list(s.starts(5)) == list(ShardedBatchSampler(ds, 8, seed=3).starts(5))
    x, y = s.batch(5)
    assert x.shape == (8, 16) and torch.equal(x[:, 1:], y[:, :-1])
    with pytest.raises(ValueError, match="micro_step"):
        s.starts(0, 1)


def test_parallel_setting_is_checked(bundled_dir, tmp_path):
    with pytest.raises(ValueError, match="parallel"):
        TrainConfig.from_dict(settings(bundled_dir, tmp_path, parallel="zero3"))


# --- one process ----------------------------------------------------------------------------------
def test_exact_resume_and_consolidation(bundled_dir, tmp_path):
    """6 steps straight == 3, 'kill', resume to 6, bit for bit (grad accumulation on); the sharded
    checkpoint consolidates into the trained model and loads with load_checkpoint."""
    kw = dict(grad_accum=2, batch_size=4)
    a = train(TrainConfig.from_dict(settings(bundled_dir, tmp_path / "a", **kw)))
    train(TrainConfig.from_dict(settings(bundled_dir, tmp_path / "b", **kw)), stop_after=3)
    assert read_checkpoint(tmp_path / "b" / "last.dcp")["step"] == 3
    b = train(TrainConfig.from_dict(settings(bundled_dir, tmp_path / "b", **kw)), resume=True)
    assert a["step"] == b["step"] == 6 and a["last"].endswith("last.dcp")
    sa, sb = a["model"].state_dict(), b["model"].state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    oa, ob = consolidate(a["last"], "optim"), consolidate(b["last"], "optim")
    assert oa.keys() == ob.keys() and any(k.endswith("exp_avg_sq") for k in oa)
    for k in oa:
        assert torch.equal(oa[k], ob[k]), k
    model, tok = load_checkpoint(a["last"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, sa[k]), k
    assert tok is not None and read_checkpoint(a["best"])["step"] in (3, 6)


def test_crash_mid_save_keeps_the_last_good_checkpoint(bundled_dir, tmp_path, monkeypatch):
    cfg = TrainConfig.from_dict(settings(bundled_dir, tmp_path, eval_interval=0))
    train(cfg, stop_after=3)
    good = consolidate(tmp_path / "last.dcp")

    def crash(state, folder):
        (folder / "__0_0.distcp").write_bytes(b"half a shard")
        raise OSError("disk full")
    monkeypatch.setattr(sc, "_write_shards", crash)
    with pytest.raises(OSError, match="disk full"):
        train(cfg, resume=True)
    assert read_checkpoint(tmp_path / "last.dcp")["step"] == 3
    again = consolidate(tmp_path / "last.dcp")
    for k in good:
        assert torch.equal(good[k], again[k]), k
    assert not (tmp_path / ".last.dcp.tmp").exists()
    # a crash between the two renames of a save: only .last.dcp.old is left, and readers use it
    os.replace(tmp_path / "last.dcp", tmp_path / ".last.dcp.old")
    assert sharded_checkpoint_dir(tmp_path / "last.dcp") == tmp_path / ".last.dcp.old"
    assert read_checkpoint(tmp_path / "last.dcp")["step"] == 3


def test_foreign_folder_is_a_one_line_error(tmp_path):
    (tmp_path / "x.dcp").mkdir()
    with pytest.raises(ValueError, match="x.dcp"):
        read_checkpoint(tmp_path / "x.dcp")
    (tmp_path / "x.dcp" / ".metadata").write_bytes(b"not pickled metadata")
    torch.save({"model_config": {}}, tmp_path / "x.dcp" / "trainer.pt")
    with pytest.raises(ValueError, match="x.dcp"):
        consolidate(tmp_path / "x.dcp")


# --- torchrun: 2 gloo ranks -----------------------------------------------------------------------
FSDP_SCRIPT = """
import json, sys
from tda.train.config import TrainConfig
from tda.train.loop import train
d = json.loads(sys.argv[1])
stop_after, resume = d.pop("stop_after", None), d.pop("resume", False)
train(TrainConfig.from_dict(d), resume=resume, stop_after=stop_after)
"""


def torchrun(tmp_path, spec: dict, nproc: int = 2):
    script = tmp_path / "fsdp.py"
    script.write_text(textwrap.dedent(FSDP_SCRIPT))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                        str(script), json.dumps(spec)], capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def test_two_ranks_match_one_and_resume_on_one(bundled_dir, tmp_path):
    """2 ranks x batch 4 == 1 rank x batch 8 (the same global batches): losses and weights within 1e-5
    relative (fp32; only the order of the gradient sums differs). The 2-rank run, killed at step 2,
    resumes on 1 rank and ends where the 1-rank run ends."""
    short = dict(max_steps=4, ckpt_interval=2, eval_interval=2, eval_iters=1)  # the torchrun start dominates
    train(TrainConfig.from_dict(settings(bundled_dir, tmp_path / "one", **short)), stop_after=2)
    at3 = read_checkpoint(tmp_path / "one" / "last.dcp")["model"]
    one = train(TrainConfig.from_dict(settings(bundled_dir, tmp_path / "one", **short)), resume=True)

    torchrun(tmp_path, settings(bundled_dir, tmp_path / "two", batch_size=4, stop_after=2, **short))
    assert sorted(p.name for p in (tmp_path / "two" / "last.dcp").iterdir()) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp", "trainer.pt"]
    ck = read_checkpoint(tmp_path / "two" / "last.dcp")
    assert ck["step"] == 2 and ck["data"]["world_size"] == 2 and len(ck["rng"]) == 2
    assert_close_losses(losses(tmp_path / "one")[:3], losses(tmp_path / "two"), 1e-5)
    assert_close_states(at3, ck["model"], 1e-5)

    resumed = train(TrainConfig.from_dict(settings(bundled_dir, tmp_path / "two", **short)), resume=True)
    assert resumed["step"] == 4
    assert_close_losses(losses(tmp_path / "one"), losses(tmp_path / "two"), 1e-5)
    assert_close_states(one["model"].state_dict(), resumed["model"].state_dict(), 1e-5)


def test_two_ranks_with_activation_checkpointing_match_one(bundled_dir, tmp_path):
    """FSDP2 with activation_checkpoint=1 (the recompute inside each sharded block, its hooks outside): 2 ranks
    give the losses and weights of one plain process."""
    short = dict(max_steps=3, ckpt_interval=3, eval_interval=3, eval_iters=1)
    one = train(TrainConfig.from_dict(settings(bundled_dir, tmp_path / "one", **short)))
    torchrun(tmp_path, settings(bundled_dir, tmp_path / "two", batch_size=4, activation_checkpoint=1, **short))
    assert_close_losses(losses(tmp_path / "one"), losses(tmp_path / "two"), 1e-5)
    assert_close_states(one["model"].state_dict(), read_checkpoint(tmp_path / "two" / "last.dcp")["model"], 1e-5)


@pytest.mark.slow
def test_two_ranks_uninterrupted_and_resumed_on_two(bundled_dir, tmp_path):
    """6 steps on 2 ranks == 6 steps on 1; 3 + resume to 6 on 2 ranks == 6 straight on 2, bit for bit."""
    one = train(TrainConfig.from_dict(settings(bundled_dir, tmp_path / "one")))
    torchrun(tmp_path, settings(bundled_dir, tmp_path / "two", batch_size=4))
    torchrun(tmp_path, settings(bundled_dir, tmp_path / "re", batch_size=4, stop_after=3))
    torchrun(tmp_path, settings(bundled_dir, tmp_path / "re", batch_size=4, resume=True))
    two, re = read_checkpoint(tmp_path / "two" / "last.dcp"), read_checkpoint(tmp_path / "re" / "last.dcp")
    assert_close_losses(losses(tmp_path / "one"), losses(tmp_path / "two"), 1e-5)
    assert_close_states(one["model"].state_dict(), two["model"], 1e-5)
    assert re["step"] == 6
    for k in two["model"]:
        assert torch.equal(two["model"][k], re["model"][k]), k


def test_scaling_script_runs_on_cpu_ranks(tmp_path):
    """benchmarks/bench_scaling.sh end to end with 2 gloo ranks on the CPU (configs/tiny-cpu.yaml): DDP and FSDP
    on 1 and 2 ranks train, and the table and JSON report each one's tokens/s and scaling efficiency. (On a
    2-core CPU the efficiency means nothing; this checks the script, which needs a multi-GPU host for real.)"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, K="2", CONFIG="configs/tiny-cpu.yaml", STEPS="6", OUT=str(tmp_path / "bs"))
    r = subprocess.run(["bash", os.path.join(root, "benchmarks", "bench_scaling.sh")], env=env, cwd=root,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "failed (rc" not in r.stdout, r.stdout[-3000:]
    table = (tmp_path / "bs" / "scaling.md").read_text()
    for par in ("ddp", "fsdp"):
        assert f"| {par} | 1 |" in table and f"| {par} | 2 |" in table and "| 100% |" in table
    rows = json.loads((tmp_path / "bs" / "scaling.json").read_text())
    assert len(rows) == 4, rows
