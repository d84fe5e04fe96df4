"""Release 2, **co-occurrence**: each device's outer product over the ``M`` items the popularity
release ranked highest, at unit Frobenius norm (its upper triangle, off-diagonal scaled by
sqrt(2)). Post-processing fits the served model (:func:`shared.cooccurrence.fit_model`)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from shared.cooccurrence import cooccurrence_contribution, fit_model, matrix_from_triangle, triangle_size
from shared.releases.base import DeviceView, Fit, Release
from shared.releases.popularity import TOP_ITEMS, Popularity


class Cooccurrence(Release):
    name = "cooccurrence"

    def budget_share(self, shares: Mapping[str, float]) -> float:
        return 1.0 - sum(float(share) for share in shares.values())  # the rest of the budget

    def dimension(self, fit: Fit) -> int:
        return triangle_size(fit.m)

    def request(self, fit: Fit) -> dict[str, np.ndarray]:
        return {TOP_ITEMS: np.ascontiguousarray(fit.top_items)}

    def contribution(self, view: DeviceView) -> np.ndarray:
        return cooccurrence_contribution(view.train_items, np.asarray(view.arrays[TOP_ITEMS]))

    def post_process(self, fit: Fit, noisy: np.ndarray, std: float) -> Fit:
        s, popularity = fit.settings, Popularity.name
        model, rank = fit_model(
            fit.noisy[popularity], fit.noise_std[popularity], fit.top_items, matrix_from_triangle(noisy, len(fit.top_items)), std,
            fit.content, fit.known, s.max_factors, s.popularity_weight, item_model=s.item_model, ease_lambda=s.ease_lambda,
            cold_weight=s.cold_weight,
        )
        return fit.with_release(self.name, noisy, std, model=model, rank=rank)
