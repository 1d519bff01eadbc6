"""The fixed first token of evaluation windows: a checkpoint trained with `data.bos` true saw the
end-of-text token at position 0 of every window, so every window the eval tools build starts with it too
(sink statistics and perplexities are then measured on the inputs the model was trained on)."""
from __future__ import annotations

from ..models.checkpoint import read_checkpoint


def bos_id_of(train_config: dict | None, tokenizer) -> int | None:
    """The eot id if the stored train config has data.bos true, else None (no train config, no data
    section or bos false: windows stay as they are). The id is the tokenizer's eot_id, the token the data
    pipeline appends after every document and the trainer puts at position 0."""
    data = (train_config or {}).get("data") or {}
    if not data.get("bos", False):
        return None
    eot = getattr(tokenizer, "eot_id", None)
    if eot is None:
        raise ValueError("checkpoint: trained with data.bos true but stores no tokenizer with an eot_id")
    return int(eot)


def checkpoint_bos_id(path, tokenizer) -> int | None:
    """bos_id_of the train config stored in a checkpoint file or run folder."""
    return bos_id_of(read_checkpoint(path).get("train_config"), tokenizer)


def with_bos(ids: list, bos_id: int | None) -> list:
    """[bos_id] + ids, or ids unchanged when bos_id is None."""
    return list(ids) if bos_id is None else [int(bos_id)] + list(ids)
