"""What /1.0/check.json does, minus HTTP: check arguments, admit, fetch, score, shape."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from ..contract import META_MODEL_VERSION, bucket_for
from ..errors import IQAError
from ..fetch import ImageFetcher, validate_url
from .errors import (
    ConflictingMediaError,
    EmptyMediaError,
    InvalidCredentialsError,
    InvalidParameterError,
    MissingMediaError,
    ProcessingTimeoutError,
    ScoringError,
    UnknownModelError,
)
from .gate import Ticket, WorkGate
from .settings import ServerSettings

logger = logging.getLogger("iqa.server")

MODEL_NAMES = ("quality",)
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


@dataclass(frozen=True)
class Upload:
    data: bytes
    filename: str


def parse_models(value: str | None) -> list[str]:
    """`models` is a comma-separated list, as in the hosted API; only `quality` exists."""
    names = [n.strip() for n in (value or "").split(",") if n.strip()]
    if not names:
        raise UnknownModelError("the `models` parameter is required: use models=quality")
    unknown = sorted(set(names) - set(MODEL_NAMES))
    if unknown:
        raise UnknownModelError(
            f"unknown model(s): {', '.join(unknown)}; this server provides: "
            f"{', '.join(MODEL_NAMES)}"
        )
    return names


def parse_flag(name: str, value: str | None) -> bool:
    text = (value or "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidParameterError(f"`{name}` must be 1 or 0 (or true/false), got {value!r}")


def score_bytes(model, data: bytes, name: str):
    """``model.score``, with any error that is not one of ours turned into ScoringError."""
    try:
        return model.score(data, name=name)
    except IQAError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime and friends raise untyped errors
        raise ScoringError(f"{name}: the model failed on this image") from exc


class CheckService:
    def __init__(self, model, settings: ServerSettings, fetcher: ImageFetcher | None = None):
        self.model = model
        self.settings = settings
        self.fetcher = fetcher or ImageFetcher(settings.fetch_policy)
        self.processes = None
        if settings.scoring_processes:
            from .processes import ProcessScoring, WorkerModel

            self.processes = ProcessScoring(WorkerModel.like(model), settings.workers,
                                            settings.scoring_nice)
        self.gate = WorkGate(settings.workers, settings.max_queue, settings.retry_after,
                             settings.scoring_nice, scoring=self.processes)
        metadata = getattr(model, "metadata", None) or {}
        self.model_version = metadata.get(META_MODEL_VERSION)

    def close(self) -> None:
        self.gate.shutdown()
        self.fetcher.close()

    def precheck(self, query: Mapping[str, str]) -> None:
        """Refusals that need no body: wrong credentials in the query string, a full queue.

        Credentials sent as form fields are checked by :meth:`check` once the body is in.
        """
        user, secret = query.get("api_user"), query.get("api_secret")
        if self.settings.keys.enabled and user and secret and \
                not self.settings.keys.check(user, secret):
            raise InvalidCredentialsError("incorrect api_user or api_secret")
        self.gate.check_room()

    async def check(self, fields: Mapping[str, str | None], upload: Upload | None) -> dict:
        """Score the media the request names; return the `quality` and `media` objects."""
        if not self.settings.keys.check(fields.get("api_user"), fields.get("api_secret")):
            if not fields.get("api_user") or not fields.get("api_secret"):
                raise InvalidCredentialsError("api_user and api_secret are required")
            raise InvalidCredentialsError("incorrect api_user or api_secret")
        parse_models(fields.get("models"))
        details = parse_flag("quality_details", fields.get("quality_details"))
        url = (fields.get("url") or "").strip() or None
        if url and upload:
            raise ConflictingMediaError("give either a `media` file or a `url`, not both")
        if not url and not upload:
            raise MissingMediaError(
                "no media: send a file in the `media` field (POST multipart) or a `url`"
            )
        if url:
            validate_url(url, self.settings.fetch_policy)  # cheap checks before taking a slot

        ticket = self.gate.admit()
        try:
            result = await asyncio.wait_for(
                self._score_media(ticket, url, upload), self.settings.request_timeout
            )
        except asyncio.TimeoutError:
            raise ProcessingTimeoutError(
                f"the request took longer than {self.settings.request_timeout:g} s"
            ) from None
        finally:
            ticket.close()
        return {"quality": self._quality_body(result, details), "uri": url or upload.filename}

    async def _score_media(self, ticket: Ticket, url: str | None, upload: Upload | None):
        if url:
            fetched = await ticket.run(self.gate.fetching, self.fetcher.fetch, url)
            data, name = fetched.data, url
        else:
            data, name = upload.data, upload.filename or "media"
        if not data:
            raise EmptyMediaError(f"{name}: the file is empty (0 bytes)")
        if self.processes is None:
            return await ticket.run(self.gate.scoring, self._score_bytes, data, name)
        from concurrent.futures.process import BrokenProcessPool

        from .processes import score_in_worker

        try:
            return await ticket.run(self.gate.scoring, score_in_worker, data, name)
        except BrokenProcessPool:
            raise ScoringError(f"{name}: the scoring worker process stopped") from None

    def _score_bytes(self, data: bytes, name: str):
        return score_bytes(self.model, data, name)

    def _quality_body(self, result, details: bool) -> dict:
        return quality_body(result, details, self.model_version)


def quality_body(result, details: bool, model_version: str | None) -> dict:
    """The response's ``quality`` object for one scored photo."""
    # Two decimals, like the hosted API; the exact value is an extra.
    body: dict = {"score": round(result.score, 2)}
    if details:
        body["score_exact"] = result.score
        # The bucket of the score as shown: an exact 0.8496 is returned as 0.85, and the
        # reader applies the bucket table to 0.85 ("very good"), not to the hidden digits.
        body["bucket"] = bucket_for(body["score"])
        if result.factors is not None:
            body["factors"] = {k: round(v, 2) for k, v in result.factors.items()}
        if model_version:
            body["model_version"] = model_version
    return body
