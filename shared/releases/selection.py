"""Release 3, **selection** (with ``selection-budget-share > 0``): each device scores the
candidate (popularity, content) weightings on its own most recent interaction, as reciprocal
ranks at unit norm; the server serves the candidate with the largest noisy sum."""

from __future__ import annotations

import numpy as np

from shared.cooccurrence import CANDIDATES, selection_contribution
from shared.item_model import CooccurrenceModel
from shared.releases.base import DeviceView, Fit, Release


class Selection(Release):
    name = "selection"
    share_key = "selection-budget-share"

    def dimension(self, fit: Fit) -> int:
        return len(CANDIDATES)

    def request(self, fit: Fit) -> dict[str, np.ndarray]:
        return {key: np.ascontiguousarray(value) for key, value in fit.model.to_arrays().items()}

    def contribution(self, view: DeviceView) -> np.ndarray:
        model = CooccurrenceModel.from_arrays(dict(view.arrays))
        return selection_contribution(model, view.train_items, view.validation_item, view.content())

    def post_process(self, fit: Fit, noisy: np.ndarray, std: float) -> Fit:
        return fit.with_release(self.name, noisy, std, model=fit.model.with_weights(*CANDIDATES[int(np.argmax(noisy))]))
