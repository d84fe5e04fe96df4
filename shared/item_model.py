"""The released item model every device ranks with (:class:`CooccurrenceModel`), fitted by
:func:`shared.cooccurrence.fit_model` from the releases and the public content.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from shared.item_content import TEXT_COLUMNS, content_blocks, content_similarity, unit_content


@dataclass(frozen=True)
class CooccurrenceModel:
    """The released model: what every device needs to rank the catalog for its user.

    ``top_items`` [M] catalog indices; ``factors`` [N, k] item embeddings (eigenvectors for the
    top items, content-predicted for items that did not exist at release time, zero for the
    others); ``popularity`` [N] shrunk DP popularity (content-predicted for new items); the
    weights of popularity and of the device's content similarity (chosen by the selection
    release).
    """

    top_items: np.ndarray
    factors: np.ndarray
    popularity: np.ndarray
    popularity_weight: float
    content_weight: float = 0.0
    # How items unknown at release time were placed (post-processing of the releases, public):
    # their factors are ``content @ factor_map`` and their popularity ``content @ popularity_map``
    # (None in models saved before these were kept). ``from_content`` marks those items.
    factor_map: np.ndarray | None = None
    popularity_map: np.ndarray | None = None
    from_content: np.ndarray | None = None
    # EASE (item_item): the user vector is the history's indicator over the M top items and
    # ``factors[j]`` holds the weights from each top item to item j; otherwise (PureSVD) a top
    # item adds its own factors to the user vector.
    item_item: bool = False

    def history_rows(self, train_items: np.ndarray) -> np.ndarray:
        """What each history item adds to the user vector [len(history), k]: its own factors
        (PureSVD) or its indicator (EASE); zeros for items outside the top M."""
        index = {int(item): k for k, item in enumerate(self.top_items.tolist())}
        items = np.asarray(train_items, dtype=np.int64).tolist()
        rows = np.zeros((len(items), self.factors.shape[1]))
        for r, item in enumerate(items):
            k = index.get(int(item))
            if k is not None:
                if self.item_item:
                    rows[r, k] = 1.0
                else:
                    rows[r] = self.factors[self.top_items[k]]
        return rows

    def user_vector(self, train_items: np.ndarray) -> np.ndarray:
        """The user's private representation ``x_M V`` (PureSVD) or ``x_M`` (EASE) [k],
        computed on the device only."""
        return self.history_rows(train_items).sum(0)

    def scales(self, train_items: np.ndarray) -> tuple[np.ndarray, float, float]:
        """(user vector, the personal term's scale, the popularity term's scale): what
        :meth:`score_parts` divides by (1 where a scale is 0), for exact explanations."""
        user = self.user_vector(train_items)
        # Index after the product: EASE's top rows are an M x M matrix, not worth a copy per user.
        scale = float(np.abs(self.factors @ user)[self.top_items].max()) if len(self.top_items) else 0.0
        top_popularity = float(self.popularity[self.top_items].max()) if len(self.top_items) else 0.0
        return user, (scale if scale > 0 else 1.0), (top_popularity if top_popularity > 0 else 1.0)

    def score_parts(self, train_items: np.ndarray, content: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """(personal, popularity, content) terms [N] each, on comparable scales."""
        user, scale, top_popularity = self.scales(train_items)
        personal = self.factors @ user / scale
        popularity = self.popularity / top_popularity
        similarity = content_similarity(content, train_items) if content is not None else np.zeros_like(personal)
        return personal, popularity, similarity

    def scores(self, train_items: np.ndarray, content: np.ndarray | None = None) -> np.ndarray:
        """Scores [N] of every catalog item for a user with these training items (``content``:
        the catalog's :func:`~shared.item_content.content_matrix`, needed when the content weight is not 0): the sum
        of :meth:`score_terms`."""
        if self.content_weight and content is None:
            raise ValueError("this model weighs content similarity: pass the catalog's content matrix")
        terms = self.score_terms(train_items, content, from_content=False)
        return sum(terms.values(), np.zeros(len(self.factors)))

    def score_terms(self, history: np.ndarray, content: np.ndarray | None, from_content: bool = True) -> dict[str, np.ndarray]:
        """Every catalog item's score split into named terms [N] each; their sum is
        :meth:`scores`: the one scoring path (evaluation, ranking, online updates and
        explanations all go through it).

        ``collaborative`` (the item's factors against the user's) and ``popularity`` for items the
        releases saw; for items placed from their content (unknown at release time, cold start)
        those two terms are linear in the content, so they split by its column blocks into
        ``text``, ``image`` and ``prior``. The content similarity's cosine splits into ``text`` and
        ``image`` for every item. ``from_content`` False reads the placed items' factors and
        popularity from the model instead (:meth:`scores`: a device ranks with what it was sent,
        whatever content it holds); True recomputes them from ``content``, which is what lets an
        explanation ask what an item would score without one of its modalities."""
        history = np.asarray(history, dtype=np.int64)
        user, scale, top_popularity = self.scales(history)
        n = len(self.factors)
        terms = {
            "collaborative": self.factors @ user / scale,
            "popularity": self.popularity_weight * self.popularity / top_popularity,
            "text": np.zeros(n),
            "image": np.zeros(n),
        }
        if from_content and content is not None and self.factor_map is not None and self.from_content is not None and self.from_content.any():
            cold = self.from_content
            terms["prior"] = np.zeros(n)
            for name, columns in content_blocks(content.shape[1]).items():
                block = content[cold][:, columns]
                terms[name][cold] += block @ self.factor_map[columns] @ user / scale
                terms[name][cold] += self.popularity_weight * (block @ self.popularity_map[columns]) / top_popularity
            terms["collaborative"][cold] = 0.0
            terms["popularity"][cold] = 0.0
        if self.content_weight and content is not None and len(history):
            # The content similarity is a cosine over unit vectors, so a modality's share is not its
            # columns' share of the dot product: an item without a modality is renormalised over the
            # other. Its parts are the two-player Shapley values of the item's own modalities (text
            # only, image only, both, none: a zero vector), the catalog's mean going to ``prior``.
            raw, t = content[:, :-3], TEXT_COLUMNS
            vectors = unit_content(content)
            profile = vectors[history].mean(0)
            profile = profile / (np.linalg.norm(profile) + 1e-9)
            full = vectors @ profile
            with_text = raw[:, :t] @ profile[:t] / (np.linalg.norm(raw[:, :t], axis=1) + 1e-9)
            with_image = raw[:, t:] @ profile[t:] / (np.linalg.norm(raw[:, t:], axis=1) + 1e-9)
            scale = self.content_weight / (full.std() + 1e-9)
            terms["text"] += scale * (with_text + full - with_image) / 2
            terms["image"] += scale * (with_image + full - with_text) / 2
            terms.setdefault("prior", np.zeros(n))
            terms["prior"] -= scale * full.mean()
        return {name: values for name, values in terms.items() if np.any(values)}

    def with_weights(self, popularity_weight: float, content_weight: float) -> "CooccurrenceModel":
        return dataclasses.replace(self, popularity_weight=popularity_weight, content_weight=content_weight)

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {
            "top-items": self.top_items.astype(np.int64),
            "factors": self.factors.astype(np.float32),
            "popularity": self.popularity.astype(np.float32),
            "popularity-weight": np.asarray([self.popularity_weight], dtype=np.float64),
            "content-weight": np.asarray([self.content_weight], dtype=np.float64),
            "item-item": np.asarray([self.item_item]),
        }
        if self.factor_map is not None:
            arrays["factor-map"] = self.factor_map.astype(np.float64)
            arrays["popularity-map"] = self.popularity_map.astype(np.float64)
            arrays["from-content"] = self.from_content.astype(bool)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "CooccurrenceModel":
        return cls(
            top_items=np.asarray(arrays["top-items"], dtype=np.int64),
            factors=np.asarray(arrays["factors"], dtype=np.float64),
            popularity=np.asarray(arrays["popularity"], dtype=np.float64),
            popularity_weight=float(np.asarray(arrays["popularity-weight"]).ravel()[0]),
            content_weight=float(np.asarray(arrays.get("content-weight", [0.0])).ravel()[0]),
            factor_map=np.asarray(arrays["factor-map"], dtype=np.float64) if "factor-map" in arrays else None,
            popularity_map=np.asarray(arrays["popularity-map"], dtype=np.float64) if "popularity-map" in arrays else None,
            from_content=np.asarray(arrays["from-content"], dtype=bool) if "from-content" in arrays else None,
            item_item=bool(np.asarray(arrays.get("item-item", [False])).ravel()[0]),
        )
