"""The request and response of ``POST /v1/score``: pydantic models, bounded everywhere.

Every string, list and mapping has a size limit, so a request cannot make the server
allocate without bound; a value outside a limit is a 422 that names the field (FastAPI
reports pydantic's ``loc``). NaN and infinity are refused (``allow_inf_nan=False``): the
standard JSON parser accepts them, a ranking prompt must not carry them. Unknown fields
are refused too (``extra="forbid"``): a misspelt ``member_id`` is an error, not an
anonymous request. No field names a path or a model: what is served is the deployment's
configuration, never the request's.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

#: Hard limits of the schema (the deployment's ``max_candidates`` is checked against the
#: request at run time and may only be lower).
MAX_TEXT_CHARS = 4000
MAX_ID_CHARS = 128
MAX_LIST_VALUES = 64
MAX_FIELDS = 32
MAX_EVENTS = 2000
MAX_CANDIDATES_HARD = 2000

Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS, strip_whitespace=True)]
Key = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_ \-]*$")]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)]
FieldValue = Text | float | Annotated[list[Text], Field(max_length=MAX_LIST_VALUES)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_max_length=MAX_TEXT_CHARS)


class Item(_Strict):
    """A candidate or history item given inline (fields as in the run's items table)."""

    item_id: Id
    item_type: Key | None = Field(None, description="job, post, course, movie, ...; the task's by default")
    title: Text | None = None
    fields: dict[Key, FieldValue] = Field(default_factory=dict, max_length=MAX_FIELDS,
                                          description="Other attributes: company, skills, ...")

    def as_row(self, default_type: str) -> dict:
        """The item as a row of the items table (what ``verbalize.item_texts`` reads)."""
        return {"item_id": self.item_id, "item_type": self.item_type or default_type,
                "title": self.title or "", **self.fields}


class Event(_Strict):
    """One event of an inline history: the member did ``action`` on ``item`` at ``timestamp``."""

    item: Item
    action: Key
    timestamp: AwareDatetime
    value: float | None = Field(None, description="e.g. a rating")


class ScoreRequest(_Strict):
    """Score candidates for one member and one question.

    The question is a task of the run's registry (``task``) or a free instruction
    (``instruction`` + ``question``: 360Brew answers new tasks zero-shot). The member is a
    ``member_id`` of the run's tables (profile and history read from them, as of ``now``)
    or given inline (``profile`` + ``history``). Candidates are item ids of the run's
    catalogue or inline items, answered in request order.
    """

    task: Key | None = Field(None, description="A task id of the registry (GET /v1/models lists them).")
    instruction: Annotated[str, StringConstraints(min_length=10, max_length=MAX_TEXT_CHARS)] | None = None
    question: Annotated[str, StringConstraints(min_length=5, max_length=1000)] | None = None
    member_id: Id | None = None
    profile: dict[Key, FieldValue] | None = Field(None, max_length=MAX_FIELDS)
    history: list[Event] = Field(default_factory=list, max_length=MAX_EVENTS)
    candidates: list[Id | Item] = Field(min_length=1, max_length=MAX_CANDIDATES_HARD)
    now: AwareDatetime | None = Field(None, description="The question's time (events at or after it are "
                                      "ignored); default: the server's clock.")

    @model_validator(mode="after")
    def _one_member_one_question(self) -> ScoreRequest:
        if (self.member_id is None) == (self.profile is None):
            raise ValueError("give exactly one of 'member_id' (a member of the run's tables) or "
                             "'profile' (an inline member, with 'history')")
        if self.member_id is not None and self.history:
            raise ValueError("'history' goes with an inline 'profile'; a 'member_id' brings its own")
        if self.task is None and (self.instruction is None or self.question is None):
            raise ValueError("give 'task' (a registry task id) or both 'instruction' and 'question'")
        ids = [c if isinstance(c, str) else c.item_id for c in self.candidates]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise ValueError(f"'candidates' holds item {dup!r} twice: send each candidate once")
        return self

    def candidate_ids(self) -> list[str]:
        return [c if isinstance(c, str) else c.item_id for c in self.candidates]


class ModelInfo(BaseModel):
    """What is live: the registry name, version and alias, and the model's shape."""

    name: str
    version: str
    alias: str | None = None
    uri: str
    quantization: str | None = None
    backend: str = "torch"


class ScoreResponse(BaseModel):
    """One probability per candidate, in request order, and what produced it."""

    item_ids: list[str]
    scores: list[float] = Field(description="Calibrated P(yes) per candidate.")
    task: str | None
    model: ModelInfo
    n_history_events: int = Field(description="History events in the prompt (after the token budget).")
    timings_ms: dict[str, float]
