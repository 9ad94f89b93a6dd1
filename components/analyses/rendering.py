"""Evaluation prefixes re-rendered with another history budget or another task's
instruction, by promptify's own code."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from components.analyses.context import AnalysedRun, AnalysisError, RunInputs


class PrefixRenderer:
    """Evaluation prefixes re-rendered by promptify's own code path.

    The history comes from ``PromptBuilder.history_section`` (the member's verbalized events
    before the question's cutoff, cut to the token budget by ``fit_to_budget``) and the
    prefix from ``render_prefix``, exactly as :class:`PromptBuilder` assembles it; only the
    history token budget, or the task whose instruction and question are asked, changes.
    :meth:`check_reproduces` verifies that the run's own budget gives the stored prefixes
    back byte for byte."""

    def __init__(self, art: AnalysedRun, inputs: RunInputs, member_ids: Sequence[str]):
        from components.promptify.examples import PreparedData, PromptBuilder

        prep = art.stage("prepare")
        prepared = PreparedData.from_dir(prep)
        self.cfg = inputs.cfg.promptify
        self.tasks = inputs.tasks
        self.builder = PromptBuilder(str(art.stage("tokenizer") / "tokenizer"), prepared,
                                     list(inputs.tasks.values()), self.cfg)
        rows = pl.read_parquet(prepared.members_dir).filter(pl.col("member_id").is_in(list(member_ids)))
        self.members = {r["member_id"]: r for r in rows.iter_rows(named=True)}
        self._line_tokens: dict[str, dict[str, np.ndarray]] = {}  # per member and style

    def render(self, rows: pl.DataFrame, budget: int | None = None,
               task_ids: Sequence[str] | None = None) -> pl.DataFrame:
        """Prefixes of evaluation ``rows`` (``member_id, task_id, style, n_prior_events``)
        with history budget ``budget`` (None: the run's) and the instruction and question of
        ``task_ids`` (None: each row's own task). Returns ``example_id, prefix,
        history_lines, history_tokens`` in row order."""
        from components.promptify.verbalize import PromptPieces, render_prefix

        # promptify validates budgets >= 16; the sweep's 0 (no history) bypasses that check
        # on purpose: fit_to_budget keeps no line for a budget <= 0
        self.builder.cfg = (self.cfg if budget is None
                            else self.cfg.model_copy(update={"history_token_budget": int(budget)}))
        task_ids = rows["task_id"].to_list() if task_ids is None else list(task_ids)
        out: dict[str, list] = {"example_id": [], "prefix": [], "history_lines": [], "history_tokens": []}
        for r, task_id in zip(rows.iter_rows(named=True), task_ids, strict=True):
            member = self.members.get(r["member_id"])
            if member is None:
                raise AnalysisError(f"member {r['member_id']} of example {r['example_id']} is not in "
                                    f"the prepare stage's member rows: the promptify and prepare "
                                    f"artifacts are from different runs")
            style = r["style"]
            history, kept, used = self.builder.history_section(
                member, style, int(r["n_prior_events"]), member["hist_action"] or [],
                self._line_tokens.setdefault(r["member_id"], {}))
            task = self.tasks[task_id]
            cutoff = r.get("cutoff")
            pieces = PromptPieces(task.instruction, member[f"profile_{style}"] or "", (), (), task.question,
                                  today=cutoff.strftime("%Y-%m-%d") if cutoff is not None else "")
            out["example_id"].append(r["example_id"])
            out["prefix"].append(render_prefix(pieces, history, style))
            out["history_lines"].append(kept)
            out["history_tokens"].append(used)
        self.builder.cfg = self.cfg
        return pl.DataFrame(out, schema={"example_id": pl.Utf8, "prefix": pl.Utf8,
                                         "history_lines": pl.Int64, "history_tokens": pl.Int64})

    def check_reproduces(self, rows: pl.DataFrame) -> None:
        """Raise unless the run's budget and each row's own task give the stored prefixes."""
        got = self.render(rows)["prefix"].to_list()
        bad = [eid for eid, a, b in zip(rows["example_id"], got, rows["prefix"], strict=True) if a != b]
        if bad:
            raise AnalysisError(
                f"{len(bad)} of {rows.height} evaluation prefixes re-rendered at the run's history "
                f"budget differ from the stored ones (first: {bad[0]}): the task registry or the "
                f"promptify code changed since this run. Re-run the pipeline (`make run`) and "
                f"analyse the new run")

