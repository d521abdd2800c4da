"""Response shapes, for the OpenAPI schema (/docs). Responses are built as plain dicts."""

from __future__ import annotations

from pydantic import BaseModel, Field


class RequestInfo(BaseModel):
    id: str = Field(examples=["req_0zrbHDeitGYY7wEGncAne"])
    timestamp: float = Field(examples=[1491402308.4762], description="Unix time, seconds")
    operations: int = Field(description="1 on success, 0 on failure")


class Quality(BaseModel):
    score: float = Field(examples=[0.95], description="Technical quality in [0, 1], 2 decimals")
    score_exact: float | None = Field(None, description="Unrounded score (quality_details=1)")
    bucket: str | None = Field(None, description="Score bucket name (quality_details=1)")
    factors: dict[str, float] | None = Field(
        None, description="Severity in [0, 1] of each distortion family (quality_details=1)"
    )
    model_version: str | None = Field(None, description="Model version (quality_details=1)")


class Media(BaseModel):
    id: str = Field(examples=["med_0zrbk8nlp4vwI5WxIqQ4u"])
    uri: str = Field(description="The URL, or the uploaded file's name (\"\" for an upload "
                               "sent without one)")


class CheckSuccess(BaseModel):
    status: str = Field(examples=["success"])
    request: RequestInfo
    quality: Quality
    media: Media


class ErrorInfo(BaseModel):
    type: str = Field(examples=["media_error"])
    code: int = Field(examples=[20])
    message: str


class CheckFailure(BaseModel):
    status: str = Field(examples=["failure"])
    request: RequestInfo
    error: ErrorInfo
