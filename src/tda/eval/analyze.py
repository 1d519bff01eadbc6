"""`tda analyze`: load checkpoints (files or run folders), pick the text, and write the side-by-side
sparsity / sink / dispersion report of tda.eval.report."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..models.checkpoint import load_checkpoint
from .bos import checkpoint_bos_id
from .report import DEFAULT_LENGTHS, analyze_models
from .tasks import long_document_tokens


@dataclass(frozen=True)
class AnalyzeSettings:
    text: str | None = None          # UTF-8 text file (None = the held-out long documents of data_dir)
    data_dir: str | None = None      # prepared data directory (None = the bundled slice)
    max_len: int = 4096              # longest context analysed
    lengths: tuple = DEFAULT_LENGTHS  # context lengths of the dispersion sweep
    n_seqs: int = 4                  # windows at the training length
    n_seqs_long: int = 1             # windows per sweep length
    map_len: int = 48                # tokens shown in the attention-map plots
    device: str = "cpu"


def run_name(path) -> str:
    """A display name from a checkpoint path: the run folder's name."""
    p = Path(path)
    return p.name if p.is_dir() else (p.parent.name or p.stem)


def analyze_checkpoints(checkpoints, out_dir, s: AnalyzeSettings, names=None, command: str = "") -> Path:
    """Analyse each checkpoint on the same text; returns the report.md written into out_dir."""
    names = list(names) if names else [run_name(c) for c in checkpoints]
    if len(names) != len(checkpoints):
        raise ValueError(f"--names: give one name per checkpoint ({len(checkpoints)}), got {len(names)}")
    if len(set(names)) != len(names):
        names = [f"{n}-{i}" for i, n in enumerate(names)]
    text = None
    if s.text:  # read before any model is built: a bad file fails fast
        try:
            text = Path(s.text).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ValueError(f"--text: {s.text}: file not found") from None
        except UnicodeDecodeError:
            raise ValueError(f"--text: {s.text}: not UTF-8 text") from None
    models = {n: load_checkpoint(c, device=s.device) for n, c in zip(names, checkpoints)}
    bos_ids = {n: checkpoint_bos_id(c, models[n][1]) for n, c in zip(names, checkpoints)}
    tokens, source = None, ""
    if text is not None:
        source = f"{s.text} ({len(text)} characters)"
    else:
        tokens = {}
        for n, (m, tok) in models.items():
            docs, source = long_document_tokens(tok, s.data_dir)
            eot = getattr(tok, "eot_id", None)
            stream = []
            for doc in docs:
                stream.extend(doc)
                if eot is not None:
                    stream.append(eot)
            tokens[n] = stream
    t0 = time.time()
    analyze_models(models, out_dir, text=text, tokens=tokens, max_len=s.max_len, lengths=list(s.lengths),
                   n_seqs=s.n_seqs, n_seqs_long=s.n_seqs_long, map_len=s.map_len, source=source, command=command,
                   bos_ids=bos_ids)
    report = Path(out_dir) / "report.md"
    print(f"[analyze] wrote {report} ({time.time() - t0:.0f}s)", flush=True)
    return report
