"""`tda compare` end to end on a micro config: two variants, a few steps, table + PNG; resume/skip."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import micro_compare_yaml
from tda.train.compare import compare, load_compare_config, markdown_table, parse_variants, variant_config


@pytest.fixture(scope="module")
def data_dir():
    from tda.data import ensure_bundled_data
    return ensure_bundled_data()      # the shared default cache: prepared once (seconds), then reused


def write_cfg(tmp_path, data_dir):
    p = tmp_path / "micro.yaml"
    p.write_text(micro_compare_yaml(data_dir, tmp_path / "runs"))
    return p


def test_compare_micro_writes_table_and_plot(tmp_path, data_dir):
    cfg = write_cfg(tmp_path, data_dir)
    res_dir = tmp_path / "results"
    out = compare(cfg, results_dir=res_dir, log=lambda *a: None)
    table = (res_dir / "results.md").read_text()
    assert "| softmax | softmax |" in table and "| rela | rela |" in table
    png = (res_dir / "loss_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    rows = json.loads((res_dir / "results.json").read_text())
    assert [r["name"] for r in rows] == ["softmax", "rela"]
    for r in rows:
        assert r["steps"] == 4 and r["val_loss"] is not None and r["tokens_per_s"] > 0
        assert 0.0 <= r["exact_zero_fraction"] <= 1.0
        assert r["peak_mem_mib"] is None or r["peak_mem_mib"] >= 0
    # equal parameter budgets and identical token budgets
    p = [r["params_non_embedding"] for r in rows]
    assert abs(p[1] / p[0] - 1) < 0.01
    assert rows[0]["tokens"] == rows[1]["tokens"]
    assert rows[1]["exact_zero_fraction"] > 0      # ReLU gives exact zeros; softmax practically none

    # a second run skips finished variants (no training: the checkpoints are not touched)
    mtime = (tmp_path / "runs" / "softmax" / "last.pt").stat().st_mtime
    logs = []
    compare(cfg, results_dir=res_dir, log=logs.append)
    assert any("skipping" in m for m in logs)
    assert (tmp_path / "runs" / "softmax" / "last.pt").stat().st_mtime == mtime
    assert len(out["results"]) == 2


@pytest.mark.slow
def test_compare_resumes_unfinished_variant(tmp_path, data_dir):
    from tda.train.loop import train
    cfg_path = write_cfg(tmp_path, data_dir)
    base, cmp, variants = load_compare_config(cfg_path)
    cfg = variant_config(base, cmp, variants[0])
    train(cfg, stop_after=2)           # as if killed after step 2 (checkpoint at step 2 exists)
    logs = []
    compare(cfg_path, only=["softmax"], results_dir=tmp_path / "res", log=logs.append)
    rows = json.loads((tmp_path / "res" / "results.json").read_text())
    assert rows[0]["steps"] == 4
    assert [s for s, _ in rows[0]["curve"]["train"]] == [1, 2, 3, 4]


def test_failed_variant_is_reported_and_others_run(tmp_path, data_dir, monkeypatch):
    import tda.train.compare as C
    real = C.run_variant

    def flaky(cfg, cmp, variant, **kw):
        if variant.name == "softmax":
            raise RuntimeError("kernel exploded")
        return real(cfg, cmp, variant, **kw)

    monkeypatch.setattr(C, "run_variant", flaky)
    cfg = write_cfg(tmp_path, data_dir)
    compare(cfg, overrides=["max_steps=2"], results_dir=tmp_path / "res", log=lambda *a: None)
    table = (tmp_path / "res" / "results.md").read_text()
    assert "failed: RuntimeError: kernel exploded" in table
    assert "| rela | rela |" in table


def test_failed_measurement_keeps_the_trained_variant(tmp_path, data_dir, monkeypatch):
    import tda.train.compare as C

    def broken(*a, **kw):
        raise RuntimeError("Expected all tensors to be on the same device")

    monkeypatch.setattr(C, "attention_measurements", broken)
    cfg = write_cfg(tmp_path, data_dir)
    compare(cfg, overrides=["max_steps=2"], only=["softmax"], results_dir=tmp_path / "res", log=lambda *a: None)
    row = json.loads((tmp_path / "res" / "results.json").read_text())[0]
    assert row["steps"] == 2 and row["val_loss"] is not None and "error" not in row
    assert "same device" in row["measure_errors"][0]
    table = (tmp_path / "res" / "results.md").read_text()
    assert "softmax: measurement failed: attention statistics" in table


def test_variant_specs_and_errors():
    v = parse_variants(["softmax", {"name": "tda_k2", "attention": "tda", "model": {"kappa": 2.0}}])
    assert v[1].attention == "tda" and v[1].model == {"kappa": 2.0}
    with pytest.raises(ValueError, match="attention must be one of"):
        parse_variants(["nope"])
    with pytest.raises(ValueError, match="duplicate"):
        parse_variants(["softmax", "softmax"])
    assert "| a |" in markdown_table([{"name": "a", "attention": "softmax", "params_non_embedding": 1e6,
                                       "mlp_hidden": 8, "val_loss": 3.0}], reference="a")


def test_shipped_configs_parse_and_match():
    from tda.models.params import count_params
    root = Path(__file__).resolve().parents[1] / "configs"
    for name in ("compare-tiny.yaml", "compare-gpu.yaml", "compare-gpu-long.yaml"):
        base, cmp, variants = load_compare_config(root / name)
        assert {"softmax", "tda", "tra", "gated_softmax", "rela", "diff", "entmax", "ssmax"} <= {v.name for v in variants}
        ref = None
        for v in variants:
            n = count_params(variant_config(base, cmp, v).model)
            ref = ref or n
            assert abs(n / ref - 1) < 0.01, (name, v.name)


def test_cli_help():
    r = subprocess.run([sys.executable, "-m", "tda.cli", "compare", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--variants" in r.stdout


def test_attention_trend_plot_draws_only_what_was_logged(tmp_path, monkeypatch):
    """Rows from before a statistic was logged (no silent_head_fraction) plot beside newer ones; a panel
    appears only for statistics some row has, and no rows with curves means no figure."""
    pytest.importorskip("matplotlib")
    import matplotlib.figure
    from tda.train.compare import plot_attention_trend
    old = {"first_token_sink_ratio": 2.0, "sink_1_share": 0.1, "exact_zero_fraction": 0.99}
    rows = [{"name": "old", "curve": {"attention": [(10, old), (20, old)]}},
            {"name": "new", "curve": {"attention": [(10, {**old, "silent_head_fraction": 0.25})]}}]
    panels, colours, real = [], [], matplotlib.figure.Figure.savefig

    def save(fig, *a, **kw):
        panels.append(len(fig.axes))
        colours.append([{ln.get_label(): ln.get_color() for ln in ax.get_lines() if ln.get_label() in ("old", "new")}
                        for ax in fig.axes])
        return real(fig, *a, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", save)
    assert plot_attention_trend(rows, tmp_path / "a.png", tokens_per_step=1000)
    assert plot_attention_trend(rows[:1], tmp_path / "b.png")
    assert panels == [4, 3]
    # a run keeps its legend colour in a panel that lacks the runs before it
    first, *rest = colours[0]
    assert first["old"] != first["new"] and rest[-1] == {"new": first["new"]}
    assert (tmp_path / "a.png").stat().st_size > 1000 and (tmp_path / "b.png").stat().st_size > 1000
    assert not plot_attention_trend([{"name": "x", "curve": {"attention": []}}], tmp_path / "c.png")
