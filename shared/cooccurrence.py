"""User-level private recommendation from three noisy releases: popularity, co-occurrence, and
the choice of weights.

Why this design (and not DP-SGD over a shared tower): Gaussian noise over d released
coordinates grows like sqrt(d), and a DP-FedAvg model of ~10^5 weights averaged over ~10^2
users a round drowns in it. Here each device contributes once to each release, and each
contribution is a *sufficient statistic* with L2 norm at most 1 over all of its user's
interactions:

1. **popularity**: the user's interaction vector ``x`` scaled to unit norm, ``x / ||x||``;
2. **co-occurrence**: the outer product ``x_M x_M^T / ||x_M||^2`` restricted to the ``M`` items
   the released popularity ranks highest (public after release 1), sent as its upper triangle
   with off-diagonal entries scaled by sqrt(2), so that the vector's L2 norm equals the
   matrix's Frobenius norm, ``||x_M||^2 / ||x_M||^2 = 1``;
3. **selection** (tuning on private data, accounted like any release): for each candidate
   (popularity weight, content weight), the reciprocal rank of the user's most recent training
   interaction when ranked from the rest of its history, as a unit-norm vector. The server
   keeps the candidate with the largest noisy sum.

Adding or removing one user changes each sum by at most 1 in L2, so each release is a Gaussian
mechanism of sensitivity 1 (user-level). The server adds the noise; Gaussian releases compose
(adaptively) to one Gaussian mechanism with ``1 / sigma^2 = sum 1 / sigma_i^2`` (mu-GDP, Dong,
Roth and Su 2019), which :mod:`shared.privacy.accounting` turns into epsilon at delta exactly.

Everything after the releases is post-processing and costs no privacy:
- ``item-model = factors`` (the default): the top eigenvectors of the noisy co-occurrence matrix
  are the item factors (PureSVD, Cremonesi et al. 2010); only eigenvalues above the noise's
  spectral norm ``2 * std_offdiag * sqrt(M)`` are kept (at most ``max-factors``), so the rank
  follows the noise;
- ``item-model = ease``: item-to-item weights in closed form from the same matrix (EASE, Steck
  2019): ``B = I - P diag(1/diag P)`` with ``P = (G + lambda I)^-1``; the user vector is the
  history itself over the M items and item ``j``'s "factors" are B's column ``j``. Without noise
  (``user-epsilon = inf``) the federated sum is the pooled matrix exactly, so this is EASE on
  rows at unit norm, level with or ahead of the library peers; under noise it gains nothing over
  the factors at 25 times the download (measured, docs/movielens-100k.md), so it is not the
  private default;
- the public catalog content (MiniLM text and MobileNetV2 image features) is a prior: a ridge
  map from content to popularity shrinks the noisy counts (empirical Bayes), and a ridge map
  from content to the factors embeds items that did not exist at release time (cold start),
  scaled by ``cold-weight`` (a ridge prediction is shrunk toward zero, so at 1 a cold item rarely
  outscores the warm ones; the weight trades warm hits for cold ones);
- the user's own vector ``x_M V`` and its content profile are computed on the device from its
  own history and never leave it (as in FedRecon, Singhal et al. 2021). Score of item ``i``:
  ``<x_M V, e_i> / max_j |<x_M V, e_j>| + w_pop * pop_i / max pop + w_content * z(cos(c_i, profile))``.

Close work: Chien et al. (ICML 2021) release noisy item sufficient statistics in DP-ALS;
McSherry and Mironov (KDD 2009) release a noisy item covariance. The fixed settings
(``cooccurrence-items`` 600, ``max-factors`` 24, budget shares 0.1 / 0.8 / 0.1) were chosen on
validation items (each user's second-to-last interaction) of MovieLens-100K, never on test items.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np


def one_blas_thread(function):
    """Run ``function`` with OpenBLAS/MKL limited to one thread. Why: called from the
    ServerApp's thread inside a simulation (and from Ray workers), OpenBLAS' own thread pool
    hung in ``exec_blas`` for minutes during an SVD; single-threaded LAPACK does not."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return function(*args, **kwargs)

    return wrapper


CONTENT_RIDGE = 10.0
# EASE's columns are M-dimensional and noisier targets than 24 factors: a stronger ridge
# (chosen on pseudo-cold validation items of MovieLens-100K, docs/movielens-100k.md).
EASE_CONTENT_RIDGE = 100.0
ITEM_MODELS = ("factors", "ease")
IMAGE_COMPONENTS = 64


def popularity_contribution(train_items: np.ndarray, num_items: int) -> np.ndarray:
    """Release 1's contribution of one user: its interaction vector at unit L2 norm [N]."""
    x = np.zeros(num_items, dtype=np.float64)
    x[np.asarray(train_items, dtype=np.int64)] = 1.0
    norm = np.linalg.norm(x)
    return x / norm if norm > 0 else x


def triangle_size(m: int) -> int:
    return m * (m + 1) // 2


def _triangle_scale(m: int) -> np.ndarray:
    """1 on the diagonal, sqrt(2) off it: the vector's L2 norm is the matrix's Frobenius norm."""
    rows, cols = np.triu_indices(m)
    return np.where(rows == cols, 1.0, math.sqrt(2.0))


def cooccurrence_contribution(train_items: np.ndarray, top_items: np.ndarray) -> np.ndarray:
    """Release 2's contribution: upper triangle of ``x_M x_M^T / ||x_M||^2``, off-diagonal
    entries times sqrt(2) (L2 norm 1; zeros when the user has none of the ``M`` items)."""
    m = len(top_items)
    position = {int(item): k for k, item in enumerate(np.asarray(top_items).tolist())}
    x = np.zeros(m, dtype=np.float64)
    for item in np.asarray(train_items).tolist():
        k = position.get(int(item))
        if k is not None:
            x[k] = 1.0
    count = x.sum()
    if count == 0:
        return np.zeros(triangle_size(m))
    rows, cols = np.triu_indices(m)
    return (x[rows] * x[cols]) / count * _triangle_scale(m)


def matrix_from_triangle(vector: np.ndarray, m: int) -> np.ndarray:
    """The symmetric ``m x m`` matrix a (noisy) release 2 vector stands for."""
    if vector.size != triangle_size(m):
        raise ValueError(f"co-occurrence vector of {vector.size} values does not fit {m} items")
    rows, cols = np.triu_indices(m)
    values = vector / _triangle_scale(m)
    matrix = np.zeros((m, m))
    matrix[rows, cols] = values
    matrix[cols, rows] = values
    return matrix


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


def _ridge(inputs: np.ndarray, targets: np.ndarray, penalty: float = CONTENT_RIDGE) -> np.ndarray:
    gram = inputs.T @ inputs + penalty * np.eye(inputs.shape[1])
    return np.linalg.solve(gram, inputs.T @ targets)


def noise_spectral_norm(noise_std_of_sum: float, m: int) -> float:
    """About the largest eigenvalue of the symmetric noise (off-diagonal std ``sigma/sqrt 2``)."""
    return 2.0 * noise_std_of_sum / math.sqrt(2.0) * math.sqrt(m)


# Candidate (popularity-weight, content-weight) pairs for the selection release.
POPULARITY_WEIGHTS = (0.1, 0.3, 1.0)
CONTENT_WEIGHTS = (0.0, 0.03, 0.1, 0.3, 1.0)
CANDIDATES = tuple((p, c) for p in POPULARITY_WEIGHTS for c in CONTENT_WEIGHTS)


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
        the catalog's :func:`content_matrix`, needed when the content weight is not 0): the sum
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


@one_blas_thread
def selection_contribution(
    model: CooccurrenceModel, train_items: np.ndarray, validation_item: int, content: np.ndarray
) -> np.ndarray:
    """Release 3's contribution: how well each candidate weighting ranks the user's validation
    item (its most recent training interaction) from the rest of its history, as reciprocal
    ranks scaled to unit L2 norm [len(CANDIDATES)] (zeros without a validation item)."""
    from shared.metrics import rank_of

    items = np.asarray(train_items, dtype=np.int64)
    rest = items[items != validation_item]
    if validation_item < 0 or len(rest) == 0 or len(rest) == len(items):
        return np.zeros(len(CANDIDATES))
    personal, popularity, similarity = model.score_parts(rest, content)
    ranks = np.array([rank_of(personal + p * popularity + c * similarity, int(validation_item), rest) for p, c in CANDIDATES])
    reciprocal = 1.0 / (1.0 + ranks)
    return reciprocal / np.linalg.norm(reciprocal)


def top_items(noisy_popularity: np.ndarray, known: np.ndarray, m: int) -> np.ndarray:
    """The ``m`` known items the released popularity ranks highest (post-processing)."""
    candidates = np.flatnonzero(known)
    order = candidates[np.argsort(-noisy_popularity[candidates], kind="stable")]
    return np.sort(order[: min(m, len(order))])


def shrunk_popularity(
    noisy: np.ndarray, noise_std: float, content: np.ndarray, known: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Empirical-Bayes popularity: the noisy counts shrunk toward a content prediction by the
    ratio of signal to noise variance; items unknown at release time get the prediction. Also
    the content-to-popularity map of that prediction."""
    known_idx = np.flatnonzero(known)
    popularity_map = _ridge(content[known_idx], noisy[known_idx])
    prior = content @ popularity_map
    residual = float(np.var(noisy[known_idx] - prior[known_idx]))
    signal = max(residual - noise_std**2, 1e-9)
    out = prior.copy()
    out[known_idx] = prior[known_idx] + signal / (signal + noise_std**2) * (noisy[known_idx] - prior[known_idx])
    return out, popularity_map


def ease_weights(gram: np.ndarray, penalty: float) -> np.ndarray:
    """EASE's item-to-item weights [M, M] from a (noisy) item Gram matrix (Steck 2019):
    ``B = I - P diag(1/diag P)``, ``P = (G + penalty I)^-1``; zero diagonal (an item never
    recommends itself). ``B[i, j]`` is how much having item i says about item j."""
    inverse = np.linalg.inv(gram + penalty * np.eye(len(gram)))
    weights = -inverse / np.diag(inverse)[None, :]
    np.fill_diagonal(weights, 0.0)
    return weights


def collaborative_factors(
    noisy_cooccurrence: np.ndarray, noise_std: float, item_model: str, max_factors: int, ease_lambda: float
) -> np.ndarray:
    """The top items' rows of the served factors [M, k], from the co-occurrence release alone:
    its eigenvectors above the noise (PureSVD) or EASE's columns. The audit recomputes them
    from the recorded release (``release-model``)."""
    if item_model == "ease":
        return ease_weights(noisy_cooccurrence, ease_lambda).T  # row j: B's column j
    if item_model != "factors":
        raise ValueError(f"item-model {item_model!r}: choose one of {', '.join(ITEM_MODELS)}")
    eigenvalues, vectors = np.linalg.eigh(noisy_cooccurrence)
    eigenvalues, vectors = eigenvalues[::-1], vectors[:, ::-1]
    above_noise = int((eigenvalues > noise_spectral_norm(noise_std, len(noisy_cooccurrence))).sum())
    return vectors[:, : max(1, min(max_factors, above_noise))]


@one_blas_thread
def fit_model(
    noisy_popularity: np.ndarray,
    popularity_noise_std: float,
    top: np.ndarray,
    noisy_cooccurrence: np.ndarray,
    cooccurrence_noise_std: float,
    content: np.ndarray,
    known: np.ndarray,
    max_factors: int,
    popularity_weight: float = 0.3,
    content_weight: float = 0.0,
    item_model: str = "factors",
    ease_lambda: float = 2.0,
    cold_weight: float = 1.0,
) -> tuple[CooccurrenceModel, int]:
    """Post-process the two releases into the served model; also its rank (factors kept, or M
    for EASE)."""
    top_factors = collaborative_factors(noisy_cooccurrence, cooccurrence_noise_std, item_model, max_factors, ease_lambda)
    rank, ridge = top_factors.shape[1], EASE_CONTENT_RIDGE if item_model == "ease" else CONTENT_RIDGE
    factors = np.zeros((len(noisy_popularity), rank))
    unknown = ~np.asarray(known, dtype=bool)
    factor_map = cold_weight * _ridge(content[top], top_factors, ridge)
    if unknown.any():
        factors[unknown] = content[unknown] @ factor_map
    factors[top] = top_factors
    popularity, popularity_map = shrunk_popularity(noisy_popularity, popularity_noise_std, content, known)
    from_content = unknown.copy()
    from_content[top] = False  # the releases' own items keep their eigenvectors
    model = CooccurrenceModel(
        top, factors, popularity, popularity_weight, content_weight, factor_map, popularity_map, from_content,
        item_item=item_model == "ease",
    )
    return model, rank
