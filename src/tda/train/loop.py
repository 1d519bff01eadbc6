"""The trainer: AdamW, grad accumulation and clipping, bf16 autocast on CUDA, periodic validation,
JSONL metrics (appended, never truncated), atomic checkpoints (last.pt, best.pt) and exact resume;
single process or torchrun DDP; parallel="fsdp": FSDP2 with sharded checkpoints (last.dcp/, best.dcp/;
train/fsdp.py, train/sharded_checkpoint.py).

Exact resume: batches are a pure function of (seed, step, rank, micro-step), the LR a function of the step,
and the model, optimizer and every RNG state are restored, so N steps straight and N/2 + resume to N
give the same parameters bit for bit (on the same device and world size).
"""
from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
from pathlib import Path

import torch

from ..models.gpt import GPT
from . import distributed as D
from .checkpoint import CHECKPOINT_VERSION, rng_state, resume as resume_state, save_checkpoint
from .config import DataConfig, TrainConfig
from .rundir import check_out_dir, clear_run
from .fsdp import shard_model, unsharded_copy
from .schedule import lr_at
from .sharded_checkpoint import is_sharded_checkpoint, resume_sharded, save_sharded

VAL_SEED_OFFSET = 1_000_003  # validation batches use their own, fixed seed stream


# --- data -----------------------------------------------------------------------------------------
class Data:
    """Train/val splits of a prepared directory and the step-indexed batches drawn from them.

    Batches come from tda.data's ShardedBatchSampler: a pure function of (seed, step, rank, micro_step),
    each rank reading windows inside its own contiguous shard of the token stream; with global_order, from
    GlobalBatchSampler (the step's global batch split over ranks). data_cfg's bos and weights apply to both.
    """

    def __init__(self, data_dir, block_size: int, batch_size: int, ctx: D.DistContext, seed: int,
                 data_cfg: DataConfig | None = None, *, pack: tuple[bool, bool] = (False, False),
                 global_order: bool = False, grad_accum: int = 1):
        from ..data.dataset import ShardedBatchSampler, load_meta, open_split, resolve_weights, split_ranges
        from ..data.global_batches import GlobalBatchSampler
        self.dir = resolve_data_dir(data_dir, ctx)
        if not (self.dir / "meta.json").is_file():
            raise FileNotFoundError(f"data_dir {str(self.dir)!r} holds no prepared corpus (meta.json); "
                                    "run `tda data prepare` first")
        self.meta = load_meta(self.dir)
        self.ctx = ctx
        self.pack = dict(zip(("train", "val"), pack))  # per split: batches carry document boundaries
        data_cfg = data_cfg or DataConfig()
        weights = resolve_weights(self.meta, data_cfg.weights)
        # bos: the eot token at position 0, which packing reads as a document start (see document_starts)
        bos_id = int(self.meta["eot_id"]) if data_cfg.bos else None
        # global_order: batches that do not depend on the world size (FSDP runs resume on any number of ranks)
        Sampler = GlobalBatchSampler if global_order else ShardedBatchSampler

        def sampler(split, seed_, **extra):
            return Sampler(open_split(self.dir, split, block_size), batch_size, seed=seed_, rank=ctx.rank,
                           world_size=ctx.world_size, bos_id=bos_id, weights=weights,
                           ranges=split_ranges(self.meta, split) if weights else None, **extra)
        self.train = sampler("train", seed, **(dict(grad_accum=grad_accum) if global_order else {}))
        # validation batches use their own fixed seed: the same batches at every evaluation
        self.val = sampler("val", seed + VAL_SEED_OFFSET)
        self.tokenizer = None
        tok = self.meta.get("tokenizer")
        if (self.dir / "tokenizer.json").is_file() or isinstance(tok, dict):
            from ..data.tokenizer import load_tokenizer
            self.tokenizer = load_tokenizer(tok if isinstance(tok, dict) else self.dir / "tokenizer.json")

    @property
    def vocab_size(self) -> int:
        if self.tokenizer is not None:
            return self.tokenizer.vocab_size
        return int(self.meta.get("vocab_size", 0))

    def batch(self, split: str, step: int, micro_step: int = 0):
        """(x, y) on the device for the optimiser step (train) or the eval batch number (val)."""
        sampler = self.train if split == "train" else self.val
        return sampler.batch(step, micro_step, device=self.ctx.device)

    def model_batch(self, split: str, step: int, micro_step: int = 0):
        """(x, y, kwargs for the model): with packing on for `split`, kwargs = docs, the batch's
        PackedDocuments, built here on the host (outside a compiled model, which then reads none of it on
        the host)."""
        if not self.pack[split]:
            return (*self.batch(split, step, micro_step), {})
        from ..data.dataset import cu_seqlens_from_starts, document_starts
        from ..ops.varlen import PackedDocuments
        sampler = self.train if split == "train" else self.val
        x, y = sampler.batch(step, micro_step, device="cpu")  # boundaries found on the host
        cu_seqlens, max_seqlen = cu_seqlens_from_starts(document_starts(x, int(self.meta["eot_id"])))
        docs = PackedDocuments.build(cu_seqlens, max_seqlen, *x.shape, self.ctx.device)
        return x.to(self.ctx.device), y.to(self.ctx.device), {"docs": docs}


def data_path(data_dir) -> Path:
    """The directory `data_dir` names: "bundled" is the bundled slice's cache directory."""
    from ..data.prepare import default_data_dir
    return default_data_dir("bundled") if str(data_dir) == "bundled" else Path(data_dir)


def resolve_data_dir(data_dir, ctx: D.DistContext) -> Path:
    """The prepared directory for `data_dir`. "bundled" means the bundled corpus slice in tda.data's cache
    directory; any directory named `bundled` without a meta.json is prepared there from the bundled slice.
    Preparation runs on rank 0 alone (seconds, offline); the other ranks wait for it."""
    from ..data.prepare import ensure_bundled_data
    d = data_path(data_dir)
    if d.name == "bundled" and not (d / "meta.json").is_file():
        if ctx.is_main:
            ensure_bundled_data(d)
        D.barrier(ctx)
    return d


# --- helpers --------------------------------------------------------------------------------------
def autocast_dtype(cfg: TrainConfig, device_type: str):
    """None (fp32) or the autocast dtype: 'auto' = bf16 on CUDA, fp32 on CPU."""
    name = cfg.dtype
    if name == "auto":
        name = "bfloat16" if device_type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    return None if name == "float32" else getattr(torch, name)


class MetricsLog:
    """metrics.jsonl (rank 0 only), appended to and never truncated, mirrored in memory so checkpoints carry
    the history. The file (and the run folder) appear with the first row: a failed start leaves nothing.

    On resume a row {"step": N, "resumed": true} marks where training restarted: rows the earlier process
    logged past its last checkpoint stay in the file above it. A resumed run whose file is gone gets the
    checkpoint's history written first."""

    def __init__(self, path: Path, enabled: bool, rows=None, resumed_at: int | None = None):
        self.path, self.enabled = path, enabled
        self.rows = list(rows or [])
        self._pending = []
        if resumed_at is not None:
            self._pending = [] if path.is_file() else list(self.rows)
            self._pending.append({"step": resumed_at, "resumed": True})

    def write(self, row: dict):
        self.rows.append(row)
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                for r in self._pending + [row]:
                    f.write(json.dumps(r) + "\n")
            self._pending = []


@torch.no_grad()
def evaluate(model, data: Data, cfg: TrainConfig, amp_dtype, ctx: D.DistContext) -> float:
    """Mean validation loss over eval_iters fixed batches (the same batches at every evaluation),
    averaged over ranks."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=ctx.device)
    for i in range(cfg.eval_iters):
        x, y, kw = data.model_batch("val", i)
        _mark_step(cfg)
        with _autocast(ctx, amp_dtype):
            _, loss = model(x, y, return_logits=False, **kw)
        total += loss.float()
    model.train(was_training)
    return float(D.all_reduce_mean(total / cfg.eval_iters, ctx))


# the attention statistics logged at each evaluation with attn_stats_seqs (metrics key: "attn_" + name)
ATTN_TREND = {"first_token_sink_ratio": "first_token_sink_ratio", "sink_1_share": "sink_1_share_eps0.3",
              "alpha_1_max": "alpha_1_max", "exact_zero_fraction": "exact_zero_fraction",
              "entropy_nats": "entropy_nats", "top8_mass": "top8_mass",
              "all_zero_row_fraction": "all_zero_row_fraction", "silent_head_fraction": "silent_head_fraction"}


def stats_batch(cfg: TrainConfig, n_seqs: int, device) -> torch.Tensor:
    """`n_seqs` fixed validation windows (their own seed), built as training builds them (bos included), from
    the directory training reads ("bundled" resolved to its cache)."""
    from ..data.dataset import ShardedBatchSampler, load_meta, open_split
    d = data_path(cfg.data_dir)
    bos_id = int(load_meta(d)["eot_id"]) if cfg.data.bos else None
    sampler = ShardedBatchSampler(open_split(d, "val", cfg.model.block_size), n_seqs,
                                  seed=cfg.seed + 7_000_003, rank=0, world_size=1, bos_id=bos_id)
    return sampler.batch(0, device=device)[0]


def attention_trend(raw, ids: torch.Tensor, ctx: D.DistContext, amp_dtype) -> dict:
    """{"attn_<name>": value} of ATTN_TREND for the plain (uncompiled, unwrapped) model on ids."""
    from ..eval.attention_stats import collect_attention_stats
    was_training = raw.training
    try:
        with torch.no_grad(), _autocast(ctx, amp_dtype):
            s = collect_attention_stats(raw, ids).summary()
    finally:
        raw.train(was_training)
    return {f"attn_{k}": round(float(s[v]), 6) for k, v in ATTN_TREND.items()}


def _mark_step(cfg: TrainConfig):
    """Under CUDA-graph modes, a new step begins: the previous replay's outputs (already consumed) may be
    overwritten, so cudagraph trees need not keep them alive or warn."""
    if cfg.compile and cfg.compile_mode in ("reduce-overhead", "max-autotune"):
        torch.compiler.cudagraph_mark_step_begin()


def _autocast(ctx, amp_dtype):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=ctx.device_type, dtype=amp_dtype)


class _StopRequest:
    """A first SIGINT (Ctrl-C, or `timeout --signal=INT`) in a single-process run asks the loop to stop at the
    next step boundary: it writes last.pt there and raises KeyboardInterrupt, so the run resumes exactly and
    loses no step. A second SIGINT interrupts at once. Off under torchrun (ranks would stop at different steps)
    and outside the main thread (signals are delivered there only)."""

    def __init__(self, enabled: bool):
        self.requested = False
        self._old = None
        if enabled and threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("interrupt: stopping after this step and saving last.pt (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    def restore(self):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None


# --- the loop -------------------------------------------------------------------------------------
def train(cfg: TrainConfig, resume: bool = False, stop_after: int | None = None, overwrite: bool = False) -> dict:
    """Train per `cfg`; with resume=True continue from out_dir/last.pt when it exists.

    An out_dir that holds a run (rundir.RUN_FILES) needs resume=True or overwrite=True (RunExistsError
    otherwise); overwrite removes the old run's files once the new run is set up.

    stop_after: leave the loop after this many completed steps without the final checkpoint, as if
    the job were killed there (tests; time-boxed jobs). Returns a summary dict (rank 0 meaningful).
    A first Ctrl-C in a single process saves last.pt at the step boundary, then raises KeyboardInterrupt.
    """
    check_out_dir(cfg.out_dir, resume=resume, overwrite=overwrite)
    ctx = D.setup(cfg.device, cfg.parallel)
    stop = _StopRequest(enabled=ctx.world_size == 1)
    try:
        return _train(cfg, ctx, resume, stop_after, overwrite, stop)
    finally:
        stop.restore()
        D.cleanup(ctx)


def _train(cfg: TrainConfig, ctx: D.DistContext, resume: bool, stop_after: int | None, overwrite: bool,
           stop: _StopRequest) -> dict:
    out = Path(cfg.out_dir)  # created by the first metrics row or checkpoint
    fsdp = cfg.parallel == "fsdp"
    eval_pack = cfg.pack_documents if cfg.eval_pack_documents is None else cfg.eval_pack_documents
    data = Data(cfg.data_dir, cfg.model.block_size, cfg.batch_size, ctx, cfg.seed, cfg.data,
                pack=(cfg.pack_documents, eval_pack), global_order=fsdp, grad_accum=cfg.grad_accum)
    if data.vocab_size and cfg.model.vocab_size < data.vocab_size:
        raise ValueError(f"model.vocab_size ({cfg.model.vocab_size}) is smaller than the tokenizer's "
                         f"vocabulary ({data.vocab_size}) in {cfg.data_dir}")

    if ctx.device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls outside autocast: TF32 tensor cores
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed)  # identical initialisation on every rank
    model = GPT(cfg.model).to(ctx.device).set_activation_checkpointing(cfg.activation_checkpoint)
    amp_dtype = autocast_dtype(cfg, ctx.device_type)
    if fsdp:
        shard_model(model, ctx, amp_dtype)  # before the optimizer: it must see the sharded parameters
    optimizer = model.configure_optimizer(cfg.weight_decay, cfg.lr, cfg.betas, ctx.device_type)
    scaler = torch.amp.GradScaler(ctx.device_type) if amp_dtype == torch.float16 else None
    torch.manual_seed(cfg.seed + ctx.rank)  # dropout streams differ per rank

    step, best_val, elapsed0, rows, resumed_at = 0, math.inf, 0.0, [], None
    last_path = out / ("last.dcp" if fsdp else "last.pt")
    if resume and (is_sharded_checkpoint(last_path) if fsdp else last_path.is_file()):
        if fsdp:
            ck = resume_sharded(last_path, model, optimizer, rank=ctx.rank)
        else:
            ck = resume_state(last_path, model, optimizer, scaler, rank=ctx.rank)
        if fsdp and ck["data"].get("global_batch") != data.train.global_batch and ctx.is_main:
            print(f"warning: resuming a run of global batch {ck['data'].get('global_batch')} with global batch "
                  f"{data.train.global_batch}: batches differ from the original run")
        elif not fsdp and ck["data"].get("world_size", 1) != ctx.world_size and ctx.is_main:
            print(f"warning: resuming a {ck['data']['world_size']}-process run with {ctx.world_size} "
                  "processes: batches differ from the original run")
        step, best_val = int(ck["step"]), float(ck.get("best_val_loss", math.inf))
        elapsed0, rows, resumed_at = float(ck.get("elapsed", 0.0)), ck.get("metrics", []), step
        if ctx.is_main:
            print(f"resumed from {last_path} at step {step}")
    elif resume and ctx.is_main:
        print(f"no checkpoint at {last_path}; starting from scratch")
    if overwrite and ctx.is_main:
        clear_run(out)

    raw = model
    if cfg.compile:
        model = torch.compile(model, mode=None if cfg.compile_mode == "default" else cfg.compile_mode)
    if not fsdp:
        model = D.wrap(model, ctx)
    metrics = MetricsLog(out / "metrics.jsonl", ctx.is_main, rows, resumed_at)
    decay_steps = cfg.lr_decay_steps or cfg.max_steps
    tokens_per_step = cfg.batch_size * cfg.model.block_size * cfg.grad_accum * ctx.world_size

    def checkpoint(path, with_optimizer=True):
        rngs = D.gather_objects(rng_state(), ctx)  # every rank takes part; rank 0 writes
        if not ctx.is_main and not fsdp:
            return
        state = {
            "version": CHECKPOINT_VERSION,
            "model": None if fsdp else raw.state_dict(),
            "step": step,
            "model_config": cfg.model.to_dict(),
            "train_config": cfg.to_dict(),
            "tokenizer": data.tokenizer.to_dict() if data.tokenizer is not None else None,
            "rng": rngs,
            "data": {"seed": cfg.seed, "world_size": ctx.world_size, "step": step,
                     "global_batch": cfg.batch_size * cfg.grad_accum * ctx.world_size},
            "metrics": list(metrics.rows),
            "best_val_loss": best_val,
            "elapsed": elapsed0 + time.time() - t0,
        }
        if fsdp:  # collective: every rank writes its shards, rank 0 the rest
            save_sharded(path.with_suffix(".dcp"), raw, optimizer if with_optimizer else None, state, ctx)
            return
        if with_optimizer:
            state["optimizer"] = optimizer.state_dict()
            state["scaler"] = scaler.state_dict() if scaler is not None else None
        save_checkpoint(state, path)

    from tqdm.auto import tqdm
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not (ctx.is_main and cfg.progress),
               dynamic_ncols=True, desc="train")
    model.train()
    t0 = time.time()
    t_log, tokens_since = time.time(), 0
    val_loss, stats_ids = None, None
    while step < cfg.max_steps:
        if (stop_after is not None and step >= stop_after) or stop.requested:
            break
        lr = lr_at(step, lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps, decay_steps=decay_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=ctx.device)
        for micro in range(cfg.grad_accum):
            _mark_step(cfg)
            x, y, kw = data.model_batch("train", step, micro)
            sync = micro == cfg.grad_accum - 1
            no_sync = D.no_sync(model, ctx) if not sync else contextlib.nullcontext()
            with no_sync:
                with _autocast(ctx, amp_dtype):
                    _, loss = model(x, y, return_logits=False, **kw)
                loss = loss / cfg.grad_accum
                with torch.autograd.set_multithreading_enabled(cfg.backward_threads):
                    (scaler.scale(loss) if scaler is not None else loss).backward()
            loss_sum += loss.detach().float()
        if scaler is not None:
            scaler.unscale_(optimizer)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_since += tokens_per_step
        bar.update(1)

        ckpt_now = (cfg.ckpt_interval and step % cfg.ckpt_interval == 0) or step == cfg.max_steps
        if step % cfg.log_interval == 0 or step == cfg.max_steps or ckpt_now:
            # a diverged run stops here, before its NaN weights can overwrite the last good checkpoint
            train_loss = float(D.all_reduce_mean(loss_sum, ctx))
            if not math.isfinite(train_loss):
                bar.close()
                raise FloatingPointError(
                    f"training diverged: train loss is {train_loss} at step {step}; the checkpoints in {out} "
                    f"are from earlier steps and were kept (lower lr, set grad_clip, or check the data)")
        if step % cfg.log_interval == 0 or step == cfg.max_steps:
            now = time.time()
            tok_s = tokens_since / max(now - t_log, 1e-9)
            t_log, tokens_since = now, 0
            metrics.write({"step": step, "train_loss": round(train_loss, 6), "lr": lr,
                           "tokens_per_s": round(tok_s, 1), "elapsed": round(elapsed0 + now - t0, 3)})
            bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tok_s:,.0f}")
        if (cfg.eval_interval and step % cfg.eval_interval == 0) or step == cfg.max_steps:
            val_loss = evaluate(model, data, cfg, amp_dtype, ctx)
            if not math.isfinite(val_loss):
                bar.close()
                raise FloatingPointError(f"training diverged: validation loss is {val_loss} at step {step}; "
                                         f"the checkpoints in {out} are from earlier steps and were kept")
            row = {"step": step, "val_loss": round(val_loss, 6), "elapsed": round(elapsed0 + time.time() - t0, 3)}
            if cfg.attn_stats_seqs and ctx.is_main:
                if stats_ids is None:
                    stats_ids = stats_batch(cfg, cfg.attn_stats_seqs, ctx.device)
                row.update(attention_trend(raw, stats_ids, ctx, amp_dtype))
            metrics.write(row)
            if ctx.is_main:
                bar.write(f"step {step}: val loss {val_loss:.4f}")
            if val_loss < best_val:
                best_val = val_loss
                checkpoint(out / "best.pt", with_optimizer=False)
        if ckpt_now:
            checkpoint(last_path)
    bar.close()
    if stop.requested:
        checkpoint(last_path)  # at a step boundary: a resume continues exactly here
        raise KeyboardInterrupt(f"stopped at step {step}; {last_path} holds it (resume to continue)")
    D.barrier(ctx)
    best_path = out / ("best.dcp" if fsdp else "best.pt")
    if fsdp:  # the sharded model cannot outlive the process group: hand back a plain copy (rank 0)
        raw = unsharded_copy(raw, ctx)
    return {"step": step, "val_loss": val_loss, "best_val_loss": best_val, "out_dir": str(out),
            "last": str(last_path), "best": str(best_path), "metrics": str(out / "metrics.jsonl"),
            "elapsed": elapsed0 + time.time() - t0, "model": raw, "tokenizer": data.tokenizer}
