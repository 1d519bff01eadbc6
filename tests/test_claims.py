"""The claim-by-claim verdicts of tda.eval.claims, and the replication report that prints them."""
import copy
import importlib.util
import json
from pathlib import Path

import pytest
from conftest import micro_compare_yaml

from tda.eval import claims
from tda.eval.survivors import survivor_experiment

ROOT = Path(__file__).resolve().parents[1]


def rows(**losses):
    """Train rows {variant: [val loss per seed]} -> the row dicts the report reads."""
    return [{"variant": v, "seed": s + 1, "val_loss": x} for v, xs in losses.items() for s, x in enumerate(xs)]


def test_val_loss_verdict_follows_the_seed_spread():
    parity = claims.val_loss_claim(rows(tda=[3.50, 3.52], softmax=[3.51, 3.53]))
    assert parity["verdict"].startswith("agree: no difference")
    lower = claims.val_loss_claim(rows(tda=[3.40, 3.401], softmax=[3.50, 3.501]))
    assert lower["verdict"].startswith("agree: TDA lower")
    higher = claims.val_loss_claim(rows(tda=[3.60, 3.601], softmax=[3.50, 3.501]))
    assert higher["verdict"].startswith("disagree")
    one_seed = claims.val_loss_claim(rows(tda=[3.4], softmax=[3.5, 3.6]))
    assert one_seed["verdict"].startswith("not testable") and "3.4000" in one_seed["ours"]


def test_zero_sink_and_passkey_verdicts():
    assert claims.zeros_claim({"tda": [0.995, 0.993], "rela": [0.9], "entmax": [0.5]})["verdict"] == \
        "agree: order tda > rela > entmax"
    assert claims.zeros_claim({"tda": [0.995, 0.98]})["verdict"].startswith("disagree: TDA below 99%")
    assert claims.zeros_claim({"tda": [0.995], "rela": [0.2], "entmax": [0.6]})["verdict"].startswith("disagree")

    assert claims.sink_claim({"tda": [0.6], "softmax": [5.0, 7.0]})["verdict"] == "agree: softmax sinks, TDA does not"
    assert claims.sink_claim({"tda": [0.6], "softmax": [0.7]})["verdict"].startswith("not testable")
    assert claims.sink_claim({"tda": [3.0], "softmax": [5.0]})["verdict"].startswith("disagree")

    assert claims.passkey_claim({"tda": [(0, 50)], "softmax": [(0, 50)]})["verdict"].startswith("not testable")
    assert claims.passkey_claim({"tda": [(20, 50), (18, 50)], "softmax": [(1, 50), (2, 50)]})["verdict"] \
        .startswith("agree")
    assert claims.passkey_claim({"tda": [(8, 50)], "softmax": [(5, 50)]})["verdict"].startswith("no resolvable")


def test_wilson_interval():
    lo, hi = claims.wilson(0, 50)
    assert lo == 0.0 and 0.06 < hi < 0.08           # the rule of three's neighbourhood: 3 / 50 = 0.06
    lo, hi = claims.wilson(25, 50)
    assert lo < 0.5 < hi and abs((lo + hi) / 2 - 0.5) < 1e-12


@pytest.fixture(scope="module")
def survivors():
    return {"results": survivor_experiment(dims=(32,), kappas=(1.0, 4.0), max_i=1023, direct_max_i=63,
                                           direct_trials=60, binomial_trials=400)}


def test_survivor_theorems_hold_in_the_simulation_and_a_broken_bound_is_caught(survivors):
    assert claims.survivors_claim(survivors)["verdict"] == "agree"
    broken = copy.deepcopy(survivors)   # a bound below the exact expectation at one position
    r = broken["results"][0]
    r["bound_single"][12] = 0.9 * r["exact_single"][12]
    assert claims.survivors_claim(broken)["verdict"] == "disagree"
    off = copy.deepcopy(survivors)   # a Monte-Carlo estimate far from the exact expectation
    off["results"][1]["binomial"]["single_mean"][5] += 1.0
    assert claims.survivors_claim(off)["verdict"] == "disagree"


def test_passkey_at_reads_eval_all():
    eval_all = {"passkey": {"trials": 50, "runs": {"needles=1": {"lengths": [1024, 4096], "accuracy": [0.5, 0.12]}}}}
    assert claims.passkey_at(eval_all) == (6, 50)
    assert claims.passkey_at(eval_all, 8192) is None
    assert claims.passkey_at(eval_all, section="passkey_finetuned") is None
    eval_all["passkey_finetuned"] = {"trials": 20, "runs": {"needles=1": {"lengths": [4096], "accuracy": [0.25]}}}
    assert claims.passkey_at(eval_all, section="passkey_finetuned") == (5, 20)


def test_supplementary_zeros_join_the_order_and_are_marked():
    rows = [{"variant": "tda", "seed": 1, "val_loss": 3.0, "exact_zero_fraction": 0.995}]
    table = claims.claims_table(rows, extra_zeros={"rela": ([0.71], "compare-gpu, 3.3M tokens"),
                                                   "entmax": ([0.993], "compare-gpu, 3.3M tokens"),
                                                   "tda": ([0.5], "ignored: the runs measured TDA")})
    row = next(line for line in table.splitlines() if "exact zeros" in line)
    assert "tda 99.50%" in row and "rela 71.00% (1 seed) *" in row and "entmax: compare-gpu, 3.3M tokens" in row
    assert "disagree: order tda , rela , entmax not decreasing" in row   # entmax above ReLA here


def _swept(attention, top8_by_length, block_size=1024):
    """An analysis summary entry with a length sweep of top-8 masses."""
    return {"model": {"attention": attention, "block_size": block_size},
            "lengths": {str(n): {"top8_mass": m} for n, m in top8_by_length.items()}}


def test_dispersion_claim_compares_top8_mass_at_the_longest_length_with_the_training_length():
    summary = {"s1-tda": _swept("tda", {1024: 0.90, 8192: 0.92}), "s2-tda": _swept("tda", {1024: 0.88, 8192: 0.86}),
               "s1-softmax": _swept("softmax", {512: 0.6, 1024: 0.57, 8192: 0.24})}
    d = claims.dispersion_from(summary)
    assert sorted(d["tda"]) == [(1024, 0.88, 8192, 0.86), (1024, 0.90, 8192, 0.92)]
    c = claims.dispersion_claim(d)
    assert c["verdict"] == "agree: softmax disperses, TDA does not"
    assert "softmax 0.570 (1 seed) at 1024 -> 0.240 (1 seed) at 8192 (kept 0.42 (1 seed))" in c["ours"]
    summary["s1-softmax"] = _swept("softmax", {1024: 0.57, 8192: 0.50})
    assert claims.dispersion_claim(claims.dispersion_from(summary))["verdict"].startswith("not testable")
    summary["s1-tda"] = _swept("tda", {1024: 0.90, 8192: 0.30})
    assert claims.dispersion_claim(claims.dispersion_from(summary))["verdict"].startswith("disagree")
    # a sweep that stops at the training length cannot show dispersion
    only_short = {"s1-tda": _swept("tda", {512: 0.9, 1024: 0.9}), "s1-softmax": _swept("softmax", {1024: 0.5})}
    assert claims.dispersion_from(only_short) == {}
    assert claims.dispersion_claim({})["verdict"].startswith("not testable")


def test_sink_row_counts_sink_heads_both_ways():
    """Sink₁ heads per variant, summed over seeds; a TDA head whose rows mostly abstain stops counting once
    abstaining rows count as no attention. The verdict stays the ratio rule's."""
    nan = float("nan")
    summary = {"s1-tda": {"model": {"attention": "tda"},
                          "main": {"alpha_1": [[0.9, 0.5], [nan, 0.1]], "zero_row_frac": [[0.0, 0.9], [1.0, 0.0]]}},
               "s1-softmax": {"model": {"attention": "softmax"},
                              "main": {"alpha_1": [[0.6, 0.4], [0.2, 0.1]], "zero_row_frac": [[0, 0], [0, 0]]}}}
    heads = claims.sink_heads_from(summary)
    assert heads == {"tda": [(2, 1, 4)], "softmax": [(2, 2, 4)]}
    c = claims.sink_claim({"tda": [3.0], "softmax": [5.0]}, heads)
    assert "heads with α₁ > 0.3: TDA 2/4 (1/4 counting abstaining rows as no attention), softmax 2/4" in c["ours"]
    assert c["verdict"] == claims.sink_claim({"tda": [3.0], "softmax": [5.0]})["verdict"]


def test_finetuned_passkey_is_its_own_row():
    rows = [{"variant": v, "seed": s, "val_loss": 3.0 + 0.01 * s} for v in ("tda", "softmax") for s in (1, 2)]
    plain = claims.claims_table(rows, passkey={"tda": [(0, 50)], "softmax": [(0, 50)]})
    assert "fine-tune" not in plain
    both = claims.claims_table(rows, passkey={"tda": [(0, 50)], "softmax": [(0, 50)]},
                               passkey_finetuned={"tda": [(40, 50)], "softmax": [(5, 50)]})
    row = next(line for line in both.splitlines() if "fine-tune" in line)
    assert "agree: TDA above softmax" in row and "tda 80% of 50" in row




def test_replication_report_writes_the_claims(tmp_path, survivors, bundled_dir):
    """Rows of two real micro comparisons (seeds 1 and 2), a passkey result per variant and the simulation:
    results.md opens with the claims table, every verdict computed from those numbers."""
    from tda.train.compare import compare
    spec = importlib.util.spec_from_file_location("replicate_report", ROOT / "benchmarks" / "replicate_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    rows_dir = tmp_path / "rows"
    rows_dir.mkdir()
    for seed in (1, 2):
        cfg = tmp_path / f"micro{seed}.yaml"
        cfg.write_text(micro_compare_yaml(bundled_dir, tmp_path / f"runs{seed}", seed=seed, max_steps=3,
                                          ckpt_interval=0, eval_interval=3, variants="softmax, tda"))
        compare(cfg, results_dir=tmp_path / f"res{seed}", log=lambda *a: None)
        for r in json.loads((tmp_path / f"res{seed}" / "results.json").read_text()):
            (rows_dir / f"s{seed}-{r['name']}.json").write_text(json.dumps(r))
    ev = tmp_path / "eval"
    for name, acc in (("s1-tda", 0.3), ("s1-softmax", 0.0)):
        (ev / f"eval-{name}").mkdir(parents=True)
        (ev / f"eval-{name}" / "eval_all.json").write_text(json.dumps(
            {"passkey": {"trials": 50, "runs": {"needles=1": {"lengths": [4096], "accuracy": [acc]}}}}))
    (tmp_path / "survivors.json").write_text(json.dumps(survivors))
    assert report.main([str(rows_dir), "--out", str(tmp_path / "out"), "--eval", str(ev),
                        "--survivors", str(tmp_path / "survivors.json")]) == 0
    text = (tmp_path / "out" / "results.md").read_text()
    table = text[text.index("## The paper's claims"):text.index("## Per variant")]
    losses = {v: [json.loads((rows_dir / f"s{s}-{v}.json").read_text())["val_loss"] for s in (1, 2)]
              for v in ("tda", "softmax")}
    want = claims.val_loss_claim([{"variant": v, "val_loss": x} for v, xs in losses.items() for x in xs])
    assert f"| {want['ours']} | {want['verdict']} |" in table
    assert "| more than 99% exact zeros (TDA > ReLA > entmax) |" in table and "softmax 0.00%" in table
    assert "passkey retrieval at 4K | TDA 15% vs softmax 6% | tda 30% of 50" in table
    assert "| survivor theorems (expected survivors under the bounds) |" in table and table.rstrip().count(
        "| agree |") == 1
    assert (tmp_path / "out" / "loss_curves.png").stat().st_size > 0


def test_per_layer_sink_table():
    """Per layer: Sink₁ heads, mean α₁ over a uniform row's, all-zero rows and silent heads, from the numbers
    tda analyze writes (a NaN α₁, a head that never attends, counts 0)."""
    spec = importlib.util.spec_from_file_location("replicate_report", ROOT / "benchmarks" / "replicate_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    an = {"s1-tda": {"main": {"n_tokens": 4, "alpha_1": [[0.5, float("nan")], [0.1, 0.2]],
                              "zero_row_frac": [[1.0, 0.5], [0.0, 0.995]]}},
          "s1-softmax": {"main": {"n_tokens": 4, "alpha_1": [[0.9, 0.8], [0.0, 0.0]], "zero_row_frac": [[0, 0], [0, 0]]}}}
    text = "\n".join(report.per_layer_lines(an))
    uniform = (1 + 1 / 2 + 1 / 3 + 1 / 4) / 4
    assert f"| s1-tda | mean α₁ / uniform | {0.25 / uniform:.1f} | {0.15 / uniform:.1f} |" in text
    assert "| s1-tda | Sink₁ heads | 1/2 | 0/2 |" in text and "| s1-softmax | Sink₁ heads | 2/2 | 0/2 |" in text
    assert "| s1-tda | all-zero rows | 75.0% | 49.8% |" in text
    # L0's sink head abstains in every row: no sink once abstaining rows count
    assert "| s1-tda | Sink₁ heads, abstaining rows as 0 | 0/2 | 0/2 |" in text
    assert "| s1-tda | silent heads (>= 99% of rows zero) | 1/2 | 1/2 |" in text
    assert "s1-softmax | all-zero rows" not in text      # softmax never abstains: no such row
