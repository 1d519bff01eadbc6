"""`tda demo`: a small model trained on the bundled corpus slice, then measured (validation loss, exact zeros of
the causal attention weights) and sampled. Its settings are the package's demo.yaml."""
from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

import yaml

from ..eval.sparsity import exact_zero_fraction
from ..models.sample import sample_text
from .config import TrainConfig, apply_overrides
from .distributed import DistContext
from .loop import Data, train

DEMO_FILE = "demo.yaml"


def demo_dict() -> dict:
    """The raw demo settings (tda/train/demo.yaml)."""
    return yaml.safe_load(resources.files(__package__).joinpath(DEMO_FILE).read_text())


def demo_config(attention: str = "tda", out=None, steps: int | None = None, data_dir=None,
                overrides=()) -> TrainConfig:
    """The TrainConfig `tda demo` runs: demo.yaml with the attention family, output folder (default
    runs/demo-<attention>), step count (intervals scaled to it) and `key=value` overrides applied."""
    d = demo_dict()
    d["model"]["attention"] = attention
    d["out_dir"] = str(out) if out is not None else f"runs/demo-{attention}"
    if data_dir is not None:
        d["data_dir"] = str(data_dir)
    if steps is not None:
        if steps < 1:
            raise ValueError(f"--steps must be >= 1, got {steps}")
        d["max_steps"] = steps
        d["warmup_steps"] = min(d["warmup_steps"], max(1, steps // 10))
        d["eval_interval"] = d["ckpt_interval"] = max(1, steps // 3)
        d["log_interval"] = max(1, min(d["log_interval"], steps // 10))
    apply_overrides(d, overrides)
    return TrainConfig.from_dict(d)


def run_demo(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, log=print) -> dict:
    """Train `cfg`, then measure exact zeros on a fixed validation batch (4 full-context windows) and
    sample 120 tokens; writes sample.txt and demo.json into cfg.out_dir and returns the summary."""
    t0 = time.time()
    m = cfg.model
    log(f"training {m.attention}: {m.n_layer} layers, {m.n_head} heads, n_embd {m.n_embd}, context "
        f"{m.block_size}, batch {cfg.batch_size}, {cfg.max_steps} steps -> {cfg.out_dir}")
    summary = train(cfg, resume=resume, overwrite=overwrite)
    model, tokenizer = summary["model"], summary["tokenizer"]
    device = str(next(model.parameters()).device)
    data = Data(cfg.data_dir, m.block_size, 4, DistContext(device=device), cfg.seed + 7)
    x, _ = data.batch("val", 0)
    zeros = exact_zero_fraction(model, x)
    text = sample_text(model, tokenizer, "The ", max_new_tokens=120, temperature=0.8, top_k=50, seed=0)[0]
    out = Path(cfg.out_dir)
    (out / "sample.txt").write_text(text + "\n")
    result = {"attention": m.attention, "steps": summary["step"], "val_loss": summary["val_loss"],
              "best_val_loss": summary["best_val_loss"], "exact_zero_fraction": zeros["overall"],
              "exact_zero_fraction_per_layer": zeros["per_layer"], "train_seconds": summary["elapsed"],
              "wall_seconds": time.time() - t0, "params": model.num_params(non_embedding=False),
              "checkpoint": summary["last"], "best": summary["best"], "metrics": summary["metrics"],
              "sample_text": text, "sample": str(out / "sample.txt"), "summary": str(out / "demo.json")}
    (out / "demo.json").write_text(json.dumps({k: v for k, v in result.items() if k != "sample_text"},
                                              indent=1) + "\n")
    return result
