"""The one error type of the dataset loaders."""

from __future__ import annotations

from pathlib import Path

from iqa.inference.errors import IQAError


class DatasetError(IQAError):
    """A dataset cannot be loaded as asked: unknown name, bad option, or bad data.

    The message names the file and the place in it (CSV line, spreadsheet row, .mat
    entry) so the user can open the file and fix it; ``source`` and ``where`` carry the
    same for programs.
    """

    error_type = "dataset_error"
    http_status = 400

    def __init__(self, message: str, *, source: Path | None = None, where: str | None = None):
        super().__init__(message)
        self.source = source
        self.where = where
