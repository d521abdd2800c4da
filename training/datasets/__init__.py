"""iqa.training.datasets: IQA datasets in their released formats, as ``QualityRecord`` lists.

Torch-free. ``load_dataset(name, root, **options)`` reads KonIQ-10k, LIVE Challenge,
SPAQ, KADID-10k or any CSV; ``splits`` makes seeded, group-aware splits where a dataset
has no official one.
"""

from . import generic_csv, kadid, koniq, livec, spaq  # noqa: F401  (register the loaders)
from .errors import DatasetError
from .records import SPLITS, QualityRecord, dataset_summary, select_split
from .registry import DATASETS, load_dataset, register_dataset

__all__ = [
    "DATASETS",
    "SPLITS",
    "DatasetError",
    "QualityRecord",
    "dataset_summary",
    "load_dataset",
    "register_dataset",
    "select_split",
]
