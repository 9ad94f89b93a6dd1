"""A score request as a prompt, built by the offline code (no Ray, no HTTP).

A ``member_id`` request reads the member's profile and history from the run's prepared
member rows and renders them with ``PromptBuilder.prefix_at``, the method that wrote the
run's test prompts: a test prompt scored by the evaluation stage and the same request sent
to the server give the same scores (tested over HTTP). An inline member (``profile`` +
``history``) goes through ``components.promptify.online``. Candidates given by id take the
catalogue's text (with as-of item statistics and match hints when the run used them);
inline candidates are verbalized like the catalogue's items.

Every way a request can name something that does not exist (an unknown task, member or
item) is a :class:`RequestError` with the field, so the HTTP layer answers 4xx with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from components.config import PromptifyConfig
from components.promptify.examples import PreparedData, PromptBuilder
from components.promptify.online import candidate_segments, request_prefix
from components.promptify.tasks import TaskSpec
from components.serve.schemas import Item, ScoreRequest


class RequestError(ValueError):
    """A request the server cannot answer as asked: ``field`` names what to fix."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status = field, message, status


@dataclass(frozen=True)
class Prompt:
    """What the scoring engine reads: one prefix and a segment per candidate."""

    prefix: str
    candidates: list[str]
    item_ids: list[str]
    task: str | None
    n_history_events: int


class RequestPrompter:
    """Builds prompts for :class:`ScoreRequest`; one per server replica.

    Args:
        tokenizer: the served model's tokenizer (history budgets count its tokens).
        tasks: the run's task registry.
        cfg: the run's promptify config (style, budgets, fields), as its prompts were built.
        builder: a :class:`PromptBuilder` over the run's prepared data, or None for a
            deployment without run tables (then only inline members and items are served).
        member_rows: the prepared member rows (``member_rows`` of the prepare stage).
    """

    def __init__(self, tokenizer, tasks: Sequence[TaskSpec], cfg: PromptifyConfig,
                 builder: PromptBuilder | None = None, member_rows: pl.DataFrame | None = None):
        self.tokenizer = tokenizer
        self.tasks = {t.id: t for t in tasks}
        self.cfg = cfg
        self.style = cfg.eval_style
        self.builder = builder
        self.rows = member_rows
        self.row_of: dict[str, int] = ({} if member_rows is None else
                                       {m: i for i, m in enumerate(member_rows["member_id"].to_list())})

    @classmethod
    def from_run(cls, tokenizer_dir: Path, prepare_dir: Path | None, tasks: Sequence[TaskSpec],
                 cfg: PromptifyConfig) -> RequestPrompter:
        """A prompter over a run's outputs: the tokenizer stage's ``tokenizer`` directory and
        the prepare stage's directory (None: inline requests only)."""
        from components.promptify.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(Path(tokenizer_dir))
        if prepare_dir is None:
            return cls(tokenizer, tasks, cfg)
        prepared = PreparedData.from_dir(Path(prepare_dir))
        builder = PromptBuilder(str(tokenizer_dir), prepared, tasks, cfg)
        rows = pl.read_parquet(prepared.members_dir)
        return cls(tokenizer, tasks, cfg, builder, rows)

    @property
    def has_tables(self) -> bool:
        return self.builder is not None

    def task_ids(self) -> list[str]:
        return sorted(self.tasks)

    def prompt(self, req: ScoreRequest, now: datetime | None = None) -> Prompt:
        """The prompt of ``req``; ``now`` (the server clock) when the request has none."""
        when = (req.now or now or datetime.now(UTC)).astimezone(UTC)
        task = None
        if req.task is not None:
            task = self.tasks.get(req.task)
            if task is None:
                raise RequestError("task", f"unknown task {req.task!r}: GET /v1/models lists the "
                                   f"{len(self.tasks)} tasks of this deployment, or send "
                                   f"'instruction' and 'question' for a new one")
        instruction = req.instruction or task.instruction
        question = req.question or task.question
        item_type = task.item_type if task is not None else "item"
        cutoff_us = int(when.timestamp() * 1e6)
        if req.member_id is not None:
            prefix, n_hist, member = self._member_prefix(req.member_id, instruction, question, when)
        else:
            events = [{"item": e.item.as_row(item_type), "action": e.action, "timestamp": e.timestamp,
                       "value": e.value} for e in req.history]
            prefix, n_hist = request_prefix(req.profile or {}, events, instruction, question, self.tokenizer,
                                            now=when, style=self.style,
                                            history_token_budget=self.cfg.history_token_budget,
                                            max_field_words=self.cfg.max_field_words)
            member = None
        segments = self._candidates(req.candidates, item_type, question, cutoff_us, member)
        return Prompt(prefix, segments, req.candidate_ids(), req.task, n_hist)

    def _member_prefix(self, member_id: str, instruction: str, question: str, when: datetime
                       ) -> tuple[str, int, str]:
        if self.builder is None or self.rows is None:
            raise RequestError("member_id", "this deployment has no run tables to look members up in: "
                               "send the member inline as 'profile' and 'history'")
        i = self.row_of.get(member_id)
        if i is None:
            raise RequestError("member_id", f"unknown member {member_id!r}: not in the run's member "
                               f"table; send it inline as 'profile' and 'history'", status=404)
        row = self.rows.row(i, named=True)
        hist_time = np.array([t.timestamp() * 1e6 for t in row["hist_time"] or []],
                             dtype=np.float64).astype(np.int64)
        prefix, n_prior, kept, _ = self.builder.prefix_at(row, instruction, question, when, self.style,
                                                           hist_time, row["hist_action"] or [], {}, {})
        return prefix, kept, member_id

    def _candidates(self, candidates: Sequence[str | Item], item_type: str, question: str, cutoff_us: int,
                    member_id: str | None) -> list[str]:
        q = question if self.cfg.question_in_candidates else None
        inline: Mapping[str, dict] = {c.item_id: c.as_row(item_type) for c in candidates if isinstance(c, Item)}
        texts = dict(zip(inline, candidate_segments(list(inline.values()), self.style, question=q,
                                                     max_field_words=self.cfg.max_field_words), strict=True))
        out = []
        for k, c in enumerate(candidates):
            if isinstance(c, Item):
                out.append(texts[c.item_id])
                continue
            if self.builder is None or c not in self.builder.item_type:
                where = "this deployment has no catalogue" if self.builder is None else "not in the run's catalogue"
                raise RequestError(f"candidates[{k}]", f"unknown item {c!r}: {where}; send it inline "
                                   f"as an object with item_id, item_type, title and fields")
            out.extend(self.builder.candidate_texts([c], self.style, cutoff_us, member_id, item_type, question))
        return out
