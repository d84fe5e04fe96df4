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

import math

import numpy as np

from shared.blas import one_blas_thread
from shared.item_model import CooccurrenceModel


CONTENT_RIDGE = 10.0
# EASE's columns are M-dimensional and noisier targets than 24 factors: a stronger ridge
# (chosen on pseudo-cold validation items of MovieLens-100K, docs/movielens-100k.md).
EASE_CONTENT_RIDGE = 100.0
ITEM_MODELS = ("factors", "ease")


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
