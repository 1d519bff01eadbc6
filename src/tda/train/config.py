"""TrainConfig: every knob of a training run, loaded from YAML or TOML with dotted `key=value` overrides.

A config file holds the TrainConfig fields at top level, the model under `model:` (GPTConfig fields) and
how windows are drawn under `data:` (DataConfig fields).
Unknown keys raise a ValueError naming the key, so a typo never silently trains the default.
"""
from __future__ import annotations

import ast
import copy
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..models.config import GPTConfig


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class DataConfig:
    """How training and validation windows are drawn from the prepared directory `data_dir`."""
    bos: bool = False                   # position 0 of every window holds the eot token (a fixed first token)
    # per-source sampling weights {source: w}; None = the directory's default mixture (code capped),
    # "natural" = uniform over all tokens
    weights: dict | str | None = None

    def __post_init__(self):
        if not isinstance(self.bos, bool):
            raise ValueError(f"data.bos must be true or false, got {self.bos!r}")
        if self.weights is not None and not isinstance(self.weights, (dict, str)):
            raise ValueError(f"data.weights must be a mapping, 'natural' or null, got {self.weights!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "DataConfig":
        _check_keys(d, {f.name for f in fields(cls)}, "data.")
        return cls(**d)


@dataclass
class TrainConfig:
    data_dir: str = "bundled"           # a prepared directory, or "bundled" (the shipped slice, cached)
    out_dir: str = "runs/default"
    model: GPTConfig = field(default_factory=GPTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # optimisation: one step = grad_accum micro-batches of batch_size sequences (per rank)
    batch_size: int = 16
    grad_accum: int = 1
    max_steps: int = 1000
    lr: float = 6e-4
    min_lr: float = 6e-5
    warmup_steps: int = 100
    lr_decay_steps: int | None = None   # cosine reaches min_lr here (None = max_steps)
    weight_decay: float = 0.1
    grad_clip: float = 1.0              # 0 disables clipping
    betas: tuple = (0.9, 0.95)
    # bookkeeping
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 10
    ckpt_interval: int = 500
    seed: int = 1337
    device: str = "auto"                # "auto" = cuda if available else cpu
    dtype: str = "auto"                 # "auto" = bf16 autocast on CUDA, fp32 on CPU; or float32|bfloat16|float16
    compile: bool = False
    # torch.compile's mode: "default"; "reduce-overhead" replays each compiled step from CUDA graphs (the host's
    # launch work, which can bound the compiled TDA step on a slow host, is paid once at capture);
    # "max-autotune" / "max-autotune-no-cudagraphs" also autotune inductor's kernels
    compile_mode: str = "default"
    # False runs backward on the calling thread. On CUDA, autograd's device thread costs each TDA layer call
    # up to ~0.5 ms more host time (docs/kernels.md).
    backward_threads: bool = False
    progress: bool = True               # tqdm bar on rank 0
    # packed documents: split each window at the corpus's end-of-text token; every document attends only within
    # itself and restarts its positions (RoPE, tau) at 0. eval_pack_documents: the same for validation
    # batches (None = as pack_documents)
    pack_documents: bool = False
    eval_pack_documents: bool | None = None
    # activation checkpointing: recompute every k-th block's activations in the backward instead of keeping
    # them (0 = off, 1 = every block): long contexts and large batches in less memory, for about one more
    # forward of those blocks per step
    activation_checkpoint: int = 0
    # under torchrun: "ddp" replicates the model (one-file checkpoints); "fsdp" shards parameters, gradients
    # and optimizer state (FSDP2), writes sharded checkpoints (last.dcp/) and draws batches that do not
    # depend on the number of ranks (docs/training.md)
    parallel: str = "ddp"
    # at every evaluation, log sink and sparsity statistics of the attention (first-token ratio, Sink_1 share,
    # exact zeros, entropy) on this many fixed validation windows: their trend against training tokens
    # (0 = off; rank 0, the weights materialised one layer at a time)
    attn_stats_seqs: int = 0

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = GPTConfig.from_dict(self.model)
        if isinstance(self.data, dict):
            self.data = DataConfig.from_dict(self.data)
        self.betas = tuple(float(b) for b in self.betas)
        for name in ("batch_size", "grad_accum", "max_steps", "eval_iters", "log_interval"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_interval", "ckpt_interval", "warmup_steps"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, min_lr={self.min_lr}")
        if len(self.betas) != 2:
            raise ValueError(f"betas must have two entries, got {self.betas}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got {self.compile_mode!r}")
        if self.parallel not in ("ddp", "fsdp"):
            raise ValueError(f"parallel must be ddp or fsdp, got {self.parallel!r}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be one of auto, float32, bfloat16, float16, got {self.dtype!r}")
        if isinstance(self.activation_checkpoint, bool) or not isinstance(self.activation_checkpoint, int) \
                or self.activation_checkpoint < 0:
            raise ValueError(f"activation_checkpoint must be an int >= 0 (0 = off, k = every k-th block), "
                             f"got {self.activation_checkpoint!r}")
        if int(self.attn_stats_seqs) < 0:
            raise ValueError(f"attn_stats_seqs must be >= 0, got {self.attn_stats_seqs}")
        if self.parallel == "fsdp" and self.attn_stats_seqs:  # rank 0 alone cannot run a sharded forward
            raise ValueError("attn_stats_seqs: not supported with parallel=fsdp (set it to 0)")
        if self.parallel == "fsdp" and self.dtype == "float16":  # fp16 needs a sharded grad scaler
            raise ValueError("dtype float16 is not supported with parallel=fsdp: use bfloat16 (or auto)")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = copy.deepcopy(d)
        _check_keys(d, {f.name for f in fields(cls)}, "")
        if isinstance(d.get("model"), dict):
            _check_keys(d["model"], {f.name for f in fields(GPTConfig)}, "model.")
        return cls(**d)


def _check_keys(d: dict, known: set, prefix: str):
    for key in d:
        if key not in known:
            raise ValueError(f"unknown config key {prefix + key!r} (known: {', '.join(sorted(known))})")


def read_config_file(path) -> dict:
    """The raw dict of a .yaml/.yml/.toml file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        import yaml
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            what = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ValueError(f"{path}: not valid YAML ({what}{where})") from None
    elif suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            try:
                import tomli as tomllib
            except ModuleNotFoundError:
                raise ValueError(f"reading {path} needs Python >= 3.11 or the 'tomli' package "
                                 "(pip install tomli)") from None
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid TOML ({e})") from None
    else:
        raise ValueError(f"config file must end in .yaml, .yml or .toml, got {path.name!r}")
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping at top level")
    return data


def parse_value(text: str):
    """'3' -> 3, '1e-3' -> 0.001, 'true' -> True, 'null' -> None, '[0.9, 0.95]' -> list, else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text


def apply_overrides(d: dict, overrides) -> dict:
    """Apply 'a.b=value' strings to the nested dict d (in place; returns d). Keys are checked."""
    known_top = {f.name for f in fields(TrainConfig)}
    known_model = {f.name for f in fields(GPTConfig)}
    known_data = {f.name for f in fields(DataConfig)}
    for item in overrides or ():
        if "=" not in item:
            raise ValueError(f"override must look like key=value, got {item!r}")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if parts[0] not in known_top:
            raise ValueError(f"unknown config key {parts[0]!r} in override {item!r}")
        if parts[0] == "model":
            if len(parts) != 2 or parts[1] not in known_model:
                raise ValueError(f"unknown config key {key.strip()!r} in override {item!r}")
            model = d.setdefault("model", {})
            if isinstance(model, GPTConfig):
                model = d["model"] = model.to_dict()
            model[parts[1]] = parse_value(value)
        elif parts[0] == "data":
            if len(parts) != 2 or parts[1] not in known_data:
                raise ValueError(f"unknown config key {key.strip()!r} in override {item!r}")
            data = d.setdefault("data", {})
            if isinstance(data, DataConfig):
                data = d["data"] = asdict(data)
            data[parts[1]] = parse_value(value)
        elif len(parts) != 1:
            raise ValueError(f"unknown config key {key.strip()!r} in override {item!r}")
        else:
            d[parts[0]] = parse_value(value)
    return d


def load_config(path=None, overrides=None) -> TrainConfig:
    """TrainConfig from a YAML/TOML file (or the defaults when path is None) plus 'key=value' overrides."""
    d = read_config_file(path) if path is not None else {}
    apply_overrides(d, overrides)
    return TrainConfig.from_dict(d)
