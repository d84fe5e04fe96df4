"""Release 1, **popularity**: each device's interaction vector at unit L2 norm. Its noisy sum
names the items whose co-occurrence is released next (post-processing: the top ``M`` known
items), and is shrunk toward the catalog content when the model is fitted."""

from __future__ import annotations

import numpy as np

from shared.cooccurrence import popularity_contribution, top_items
from shared.releases.base import DeviceView, Fit, Release

TOP_ITEMS = "top-items"  # the array of the items ranked highest, sent with the co-occurrence request


class Popularity(Release):
    name = "popularity"
    share_key = "popularity-budget-share"

    def dimension(self, fit: Fit) -> int:
        return fit.num_items

    def contribution(self, view: DeviceView) -> np.ndarray:
        return popularity_contribution(view.train_items, view.num_items)

    def post_process(self, fit: Fit, noisy: np.ndarray, std: float) -> Fit:
        return fit.with_release(self.name, noisy, std, top_items=top_items(noisy, fit.known, fit.m))

    def recorded(self, fit: Fit) -> dict[str, np.ndarray]:
        return {self.name: fit.noisy[self.name], TOP_ITEMS: fit.top_items}
