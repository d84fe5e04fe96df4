"""The public catalog content as the released item model reads it: the content matrix (text,
image principal directions, presence flags), its column blocks, and a user's content
similarity. Public and computed the same on the server and every device (the reasons are in
:mod:`shared.cooccurrence`).
"""

from __future__ import annotations

import numpy as np

from shared.blas import one_blas_thread
IMAGE_COMPONENTS = 64


@one_blas_thread
def content_matrix(
    text: np.ndarray,
    text_mask: np.ndarray,
    image: np.ndarray,
    image_mask: np.ndarray,
    modalities: tuple[str, ...] = ("text", "image"),
) -> np.ndarray:
    """Public item content as ridge inputs [N, 384 + 64 + 3]: the unit-norm MiniLM text
    vector, the image features' top principal directions (unit norm), presence flags, 1.
    A modality left out of ``modalities`` is absent for every item (zeros, flag 0): the
    modality ablations of the study."""
    if "text" not in modalities:
        text_mask = np.zeros_like(np.asarray(text_mask))
    if "image" not in modalities:
        image_mask = np.zeros_like(np.asarray(image_mask))
    text = np.asarray(text, dtype=np.float64) * np.asarray(text_mask)[:, None]
    image = np.asarray(image, dtype=np.float64) * np.asarray(image_mask)[:, None]
    present = np.asarray(image_mask, dtype=bool)
    if present.any():
        image = (image - image[present].mean(0)) * present[:, None]
    u, s, _ = np.linalg.svd(image, full_matrices=False)
    k = min(IMAGE_COMPONENTS, len(s))
    projected = u[:, :k] * s[:k]
    projected /= np.linalg.norm(projected, axis=1, keepdims=True) + 1e-9
    flags = np.stack([np.asarray(text_mask, float), np.asarray(image_mask, float), np.ones(len(text))], axis=1)
    return np.hstack([text, projected, flags])


TEXT_COLUMNS = 384  # MiniLM's dimension: the first columns of content_matrix


def unit_content(content: np.ndarray) -> np.ndarray:
    """The content vectors without the presence flags and the constant, at unit norm [N, D]."""
    vectors = content[:, :-3]  # without the presence flags and the constant (as content_similarity)
    return vectors / (np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-9)


def content_blocks(columns: int) -> dict[str, slice]:
    """The content matrix's column blocks: MiniLM text, image principal directions, and the
    presence flags with the constant (``prior``: what any item gets, whatever its content)."""
    return {"text": slice(0, TEXT_COLUMNS), "image": slice(TEXT_COLUMNS, columns - 3), "prior": slice(columns - 3, columns)}


def content_similarity(content: np.ndarray, train_items: np.ndarray) -> np.ndarray:
    """How close each item's public content is to the user's history, standardised [N]: the
    cosine to the mean of the history's content vectors, then z-scored over the catalog.
    Computed on the device from public content and its own history: no privacy cost."""
    vectors = content[:, :-3]  # without the presence flags and the constant
    vectors = vectors / (np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-9)
    items = np.asarray(train_items, dtype=np.int64)
    if len(items) == 0:
        return np.zeros(len(content))
    profile = vectors[items].mean(0)
    similarity = vectors @ profile / (np.linalg.norm(profile) + 1e-9)
    return (similarity - similarity.mean()) / (similarity.std() + 1e-9)
