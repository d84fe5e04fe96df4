"""The dataset format (items.csv, interactions.csv, images/), its loader, splits and generator."""

from shared.data.schema import Dataset, DatasetError, load_catalog, load_dataset
from shared.data.split import LeaveLastOutSplit, leave_last_out, split_for

__all__ = ["Dataset", "DatasetError", "load_catalog", "load_dataset", "LeaveLastOutSplit", "leave_last_out", "split_for"]
