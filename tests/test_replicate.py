"""benchmarks/replicate.sh end to end on the CPU with a tiny model: the scripts a scarce GPU call runs must
not fail on wiring. A shard of the bundled corpus stands in for the large one; `run` trains, analyses and
evaluates (passkey fine-tune included) in one go, `report` turns the returned files into the claims table."""
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ("max_steps=4 compile=false device=cpu model.n_layer=1 model.n_embd=64 model.n_head=2 batch_size=2 "
        "eval_interval=2 eval_iters=1 ckpt_interval=2 model.block_size=128 log_interval=1 attn_stats_seqs=2")


def test_run_then_report(bundled_dir, tmp_path):
    pytest.importorskip("matplotlib")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OUT": str(tmp_path / "out"),
           "REPLICATE_SHARD": str(tmp_path / "shard"), "REPLICATE_DATA": str(tmp_path / "data"),
           "REPLICATE_RUNS": str(tmp_path / "runs"), "EVAL_DEVICE": "cpu", "PASSKEY_TRIALS": "1",
           "PASSKEY_FT_STEPS": "2", "PASSKEY_FT_BATCH": "2", "ANALYZE_MAX_LEN": "256", "ANALYZE_LENGTHS": "128 256",
           "EXTRA_SET": TINY, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "tda.cli", "data", "shard", str(bundled_dir), "--out",
                    env["REPLICATE_SHARD"], "--max-mib", "1"], env=env, check=True, capture_output=True)
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "replicate.sh"), "run", "tda", "9"], env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = tmp_path / "out"
    row = json.loads((out / "replicate" / "s9-tda.json").read_text())
    assert row["steps"] == 4 and row["attention"] == "tda" and len(row["curve"]["attention"]) == 2
    with tarfile.open(out / "replicate-eval-s9-tda.tar.gz") as t:
        names = t.getnames()
    assert "analysis/summary.json" in names and "eval-s9-tda/eval_all.json" in names
    assert "eval-s9-tda/passkey_finetuned_accuracy.png" in names
    # report: rows and archives side by side, as they come back from the GPU machine
    rows = tmp_path / "rows"
    rows.mkdir()
    (rows / "s9-tda.json").write_text((out / "replicate" / "s9-tda.json").read_text())
    (rows / "replicate-eval-s9-tda.tar.gz").write_bytes((out / "replicate-eval-s9-tda.tar.gz").read_bytes())
    rep = subprocess.run(["bash", str(ROOT / "benchmarks" / "replicate.sh"), "report", str(rows),
                          str(tmp_path / "report")], env=env, capture_output=True, text=True, timeout=600)
    assert rep.returncode == 0, rep.stdout[-3000:] + rep.stderr[-3000:]
    md = (tmp_path / "report" / "results.md").read_text()
    for text in ("## The paper's claims", "more than 99% exact zeros", "survivor theorems",
                 "Passkey retrieval after the passkey fine-tune", "Perplexity on held-out long documents",
                 "attention_trend.png", "rela", "entmax", "### Sinks per layer", "no dispersion at long context"):
        assert text in md, text
    assert (tmp_path / "report" / "attention_trend.png").stat().st_size > 1000
    # the rows alone regenerate the same report from the archives unpacked under it (docs/results/replicate)
    (rows / "replicate-eval-s9-tda.tar.gz").unlink()
    again = subprocess.run(["bash", str(ROOT / "benchmarks" / "replicate.sh"), "report", str(rows),
                            str(tmp_path / "report")], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "report" / "results.md").read_text() == md
    # an evaluated checkpoint without a training row stays out of the tables and claims
    (rows / "s9-tda.json").rename(rows / "s7-tda.json")
    stray = subprocess.run(["bash", str(ROOT / "benchmarks" / "replicate.sh"), "report", str(rows),
                            str(tmp_path / "report")], env=env, capture_output=True, text=True, timeout=600)
    assert stray.returncode == 0, stray.stderr[-3000:]
    assert "no row for s9-tda" in stray.stderr and "s9-tda" not in (tmp_path / "report" / "results.md").read_text()
