"""Training: config, LR schedule, atomic checkpoints, the loop (single process or torchrun DDP)."""
from .config import TrainConfig, load_config
from .schedule import lr_at

__all__ = ["TrainConfig", "load_config", "lr_at", "train"]


def train(config, resume: bool = False, overwrite: bool = False):
    """Run the trainer (imported lazily: `tda.train` stays cheap to import)."""
    from .loop import train as _train
    return _train(config, resume=resume, overwrite=overwrite)
