"""Name -> loader registry, and ``load_dataset`` that validates options before loading."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable

from .errors import DatasetError
from .records import QualityRecord

Loader = Callable[..., list[QualityRecord]]

# name -> loader(root, **options). Loaders register themselves on import (see __init__).
DATASETS: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    def decorator(loader: Loader) -> Loader:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is registered twice")
        DATASETS[name] = loader
        return loader

    return decorator


def load_dataset(name: str, root: str | os.PathLike, **options) -> list[QualityRecord]:
    """Load every record of dataset ``name`` from ``root``; options are the loader's kwargs."""
    loader = DATASETS.get(name)
    if loader is None:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}")
    # Check options here so a typo is a DatasetError naming the valid options, not a
    # TypeError from deep inside a loader.
    parameters = dict(inspect.signature(loader).parameters)
    parameters.pop("root", None)
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise DatasetError(
            f"dataset {name!r} has no option(s) {', '.join(unknown)}; "
            f"its options are: {', '.join(parameters)}"
        )
    missing = [key for key, parameter in parameters.items()
               if parameter.default is inspect.Parameter.empty and key not in options]
    if missing:
        raise DatasetError(f"dataset {name!r} needs the option(s): {', '.join(missing)}")
    return loader(root, **options)
