"""The API's answers as typed schemas: BentoML's client, its docs page at ``/`` and ``/docs.json`` come from them."""
from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["BatchItem", "BatchResult", "Classification", "FeedbackReceipt", "ModelRef", "Probability"]


class Probability(BaseModel):
    label: str
    score: float


class ModelRef(BaseModel):
    name: str = Field(description="the backbone")
    version: str
    variant: str = Field("fp32", description="the model file served: fp32, int8 or fp16")


class Classification(BaseModel):
    label: str = Field(description="the most probable class")
    score: float = Field(description="its calibrated probability")
    probabilities: list[Probability] = Field(description="every class (or the top k), best first")
    model: ModelRef
    known: bool | None = Field(None, description="false: the image looks like none of the classes")
    novelty: float | None = Field(None, description="higher means less like the training data")


class BatchItem(BaseModel):
    index: int
    result: Classification | None = None
    error: str | None = None
    detail: str | None = None
    status: int | None = None


class BatchResult(BaseModel):
    results: list[BatchItem] = Field(description="one per image, in upload order")


class FeedbackReceipt(BaseModel):
    sha256: str = Field(description="the stored pixels' hash (only the re-encoded pixels are kept)")
    label: str
    duplicate: bool
