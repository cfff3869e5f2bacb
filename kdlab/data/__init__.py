"""Data: corpora, tokenizers, token cache, splits, budgets and the LightningDataModule.

``TokenDataModule`` and the window schedules are imported on first use, so that code which
only needs corpora or budgets (``kdlab sweep plan``, ``kdlab plan``) does not pay for
importing torch and Lightning.
"""

from typing import TYPE_CHECKING, Any

from kdlab.data.budget import resolve_tokens
from kdlab.data.cache import DEFAULT_CACHE_DIR, TokenCache, corpus_info, open_token_cache
from kdlab.data.corpora import (
    CORPUS_NAMES,
    Corpus,
    CorpusConfig,
    CorpusInfo,
    FilesCorpus,
    HFCorpus,
    MarkovCorpus,
    StdlibCorpus,
    build_corpus,
)
from kdlab.data.splits import SplitLayout, split_layout
from kdlab.data.tokenizers import (
    BPETokenizer,
    ByteTokenizer,
    IdentityTokenizer,
    Tokenizer,
    TokenizerConfig,
    build_tokenizer,
)

if TYPE_CHECKING:
    from kdlab.data.datamodule import TokenDataModule
    from kdlab.data.windows import IGNORE_INDEX, WindowSchedule, eval_windows

_LAZY = {
    "TokenDataModule": "kdlab.data.datamodule",
    "IGNORE_INDEX": "kdlab.data.windows",
    "WindowSchedule": "kdlab.data.windows",
    "eval_windows": "kdlab.data.windows",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kdlab.data' has no attribute {name!r}")


__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "CORPUS_NAMES",
    "Corpus",
    "CorpusConfig",
    "CorpusInfo",
    "DEFAULT_CACHE_DIR",
    "FilesCorpus",
    "HFCorpus",
    "IGNORE_INDEX",
    "IdentityTokenizer",
    "MarkovCorpus",
    "SplitLayout",
    "StdlibCorpus",
    "TokenCache",
    "TokenDataModule",
    "Tokenizer",
    "TokenizerConfig",
    "WindowSchedule",
    "build_corpus",
    "build_tokenizer",
    "corpus_info",
    "eval_windows",
    "open_token_cache",
    "resolve_tokens",
    "split_layout",
]
