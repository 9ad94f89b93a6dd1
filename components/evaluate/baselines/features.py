"""Point-in-time features of (member, item, task, cutoff) rows: counts and rates from events
strictly before the cutoff, recency, attribute affinities and profile-item matches."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta

import polars as pl

from components.evaluate.baselines.data import DAY_US, BaselineConfig, BaselineData, _require
from components.promptify.examples import label_events
from components.promptify.tasks import TaskSpec

#: Features of ``lightgbm_ids``: the point-in-time counts and rates of
#: :func:`point_in_time_features` (with their ``_<d>d`` windows), nothing else.
ID_COUNT_FEATURES = ("item_events", "item_engaged", "item_task_pos", "item_task_events",
                     "member_events", "member_engaged", "member_task_pos", "member_task_events",
                     "member_item_events", "item_task_rate", "member_task_rate")

#: Ordinal scale of seniorities (synthetic world vocabulary) and the seniority a course
#: level suits; other values give a null distance.
SENIORITY_RANK = {"intern": 0.0, "entry": 1.0, "associate": 2.0, "mid-senior": 3.0,
                  "director": 4.0, "executive": 5.0,
                  "Beginner": 0.5, "Intermediate": 2.5, "Advanced": 4.0}


def _counts_before(keys: pl.DataFrame, events: pl.DataFrame, by: list[str], name: str,
                   windows_days: Sequence[float] = (), last: bool = False) -> pl.DataFrame:
    """For each distinct (``by``, cutoff) of ``keys``: events with ``timestamp < cutoff``
    (``name``), those in the last d days (``name_<d>d``) and the latest one's time
    (``name_last``). As-of joins over cumulative counts: no event at/after the cutoff."""
    q = keys.select(*by, "cutoff").unique()
    cum = (
        events.group_by(*by, "timestamp").len("n").sort("timestamp", *by)
        .with_columns(pl.col("n").cum_sum().over(by).alias("__cum"), pl.col("timestamp").alias("__ts"))
        .select(*by, "timestamp", "__ts", "__cum")
    )
    out = q
    for days in (0.0, *windows_days):
        left = q.with_columns((pl.col("cutoff") - timedelta(days=days)).alias("__t")).sort("__t")
        j = left.join_asof(cum, left_on="__t", right_on="timestamp", by=by, strategy="backward",
                           allow_exact_matches=False, check_sortedness=False)
        cols = [pl.col("__cum").fill_null(0).cast(pl.Float64).alias(f"__c{days}")]
        if days == 0.0 and last:
            cols.append(pl.col("__ts").alias(f"{name}_last"))
        out = out.join(j.select(*by, "cutoff", *cols), on=[*by, "cutoff"], how="left", nulls_equal=True)
    exprs = [pl.col("__c0.0").alias(name)]
    exprs += [(pl.col("__c0.0") - pl.col(f"__c{d}")).alias(f"{name}_{d:g}d") for d in windows_days]
    keep = [f"{name}_last"] if last else []
    return out.select(*by, "cutoff", *exprs, *keep)


def _days(a: pl.Expr, b: pl.Expr) -> pl.Expr:
    return (a - b).dt.total_microseconds().cast(pl.Float64) / DAY_US


def _profile_matches(q: pl.DataFrame, members: pl.DataFrame, items: pl.DataFrame,
                     match_fields: dict[str, str] | None = None) -> pl.DataFrame:
    """Profile-item attribute matches: for each (member column, item column) pair of
    ``match_fields`` (default: :func:`components.promptify.matches.shared_fields`, the
    columns both the profile text and the item text show: the same pairs the prompts'
    match hints compare), ``same_<col>`` for scalars (case-insensitive) and
    ``<col>_share`` (share of the item's values the member has) for lists; plus the
    synthetic world's seniority gap, remote flag and item dates where the columns exist."""
    from components.promptify.matches import shared_fields

    pairs = shared_fields(members, items, match_fields)
    mcols = sorted(set(pairs) | {c for c in ("seniority", "open_to_work", "years_experience") if c in members.columns})
    icols = sorted(set(pairs.values()) | {c for c in ("seniority", "level", "workplace", "created_at", "expires_at")
                                          if c in items.columns})
    df = (q.join(members.select("member_id", *[pl.col(c).alias(f"m_{c}") for c in mcols]),
                 on="member_id", how="left")
          .join(items.select("item_id", *[pl.col(c).alias(f"i_{c}") for c in icols]), on="item_id", how="left"))
    feats: list[pl.Expr] = []
    for mc, ic in pairs.items():
        m, i = pl.col(f"m_{mc}"), pl.col(f"i_{ic}")
        if isinstance(members.schema[mc], pl.List):
            if members.schema[mc].inner == pl.String and items.schema[ic].inner == pl.String:
                i, m = i.list.eval(pl.element().str.to_lowercase()), m.list.eval(pl.element().str.to_lowercase())
            n_item = i.list.len()
            shared = i.list.set_intersection(m).list.len()
            # "skill_share" kept as the name of the synthetic world's skills feature
            name = "skill_share" if mc == "skills" else f"{mc}_share"
            feats.append(pl.when(n_item > 0).then(shared / n_item).alias(name))
        elif members.schema[mc] == pl.String and items.schema[ic] == pl.String:
            feats.append((m.str.to_lowercase() == i.str.to_lowercase()).cast(pl.Float64).alias(f"same_{mc}"))
        else:
            feats.append((m == i).cast(pl.Float64).alias(f"same_{mc}"))
    if "workplace" in icols:
        feats.append((pl.col("i_workplace") == "Remote").cast(pl.Float64).alias("item_remote"))
    target = [pl.col(f"i_{c}") for c in ("seniority", "level") if c in icols]
    if "seniority" in mcols and target:
        rank_m = pl.col("m_seniority").replace_strict(SENIORITY_RANK, default=None, return_dtype=pl.Float64)
        rank_i = pl.coalesce(target).replace_strict(SENIORITY_RANK, default=None, return_dtype=pl.Float64)
        feats.append((rank_i - rank_m).alias("seniority_gap"))
    if "open_to_work" in mcols:
        feats.append(pl.col("m_open_to_work").cast(pl.Float64).alias("open_to_work"))
    if "years_experience" in mcols:
        feats.append(pl.col("m_years_experience").cast(pl.Float64).alias("years_experience"))
    if "created_at" in icols:
        feats.append(_days(pl.col("cutoff"), pl.col("i_created_at")).alias("item_age_days"))
    if "expires_at" in icols:
        feats.append(_days(pl.col("i_expires_at"), pl.col("cutoff")).alias("item_expires_in_days"))
    return df.select("__q", *feats)


def point_in_time_features(data: BaselineData, queries: pl.DataFrame, tasks: Sequence[TaskSpec],
                           cfg: BaselineConfig | None = None) -> pl.DataFrame:
    """Features of each (member_id, item_id, task_id, cutoff) query row, from events
    strictly before its cutoff and static profile / item columns.

    Returns ``queries`` (same rows, same order) plus float feature columns; see
    :func:`feature_names`. Raises when a query names a task not in ``tasks``."""
    cfg = cfg or BaselineConfig()
    _require(queries, ["member_id", "item_id", "task_id", "cutoff"], "the query rows",
             "build them with candidate rows of eval examples or training_lists()")
    unknown = set(queries["task_id"].unique().to_list()) - {t.id for t in tasks}
    if unknown:
        raise ValueError(f"tasks {sorted(unknown)} are not in the task registry passed: load the "
                         "registry the examples were built with (promptify.tasks)")
    q = queries.with_row_index("__q")
    ev = data.interactions.select("member_id", "item_id", "surface", "action", "timestamp", "item_type",
                                  "split", *(["value"] if "value" in data.interactions.columns else []))
    labeled = label_events(ev, [t for t in tasks if t.id in set(queries["task_id"].unique().to_list())])
    engaged = ev.filter(~pl.col("action").is_in(cfg.not_engaged_actions))
    rec = cfg.recent_days
    parts = [
        (["item_id"], ev, "item_events", rec, True),
        (["item_id"], engaged, "item_engaged", rec, False),
        (["item_id", "task_id"], labeled.filter(pl.col("label") == 1), "item_task_pos", rec, False),
        (["item_id", "task_id"], labeled, "item_task_events", rec, False),
        (["task_id"], labeled.filter(pl.col("label") == 1), "task_pos", (), False),
        (["task_id"], labeled, "task_events", (), False),
        (["member_id"], ev, "member_events", (), True),
        (["member_id"], engaged, "member_engaged", (), False),
        (["member_id", "task_id"], labeled.filter(pl.col("label") == 1), "member_task_pos", (), False),
        (["member_id", "task_id"], labeled, "member_task_events", (), False),
        (["member_id", "item_id"], ev, "member_item_events", (), False),
    ]
    out = q
    for by, events, name, windows, last in parts:
        out = out.join(_counts_before(q, events, by, name, windows, last), on=[*by, "cutoff"], how="left")
    # the member's engagement with items of the candidate's industry / topic / company
    for attr in (c for c in ("industry", "topic", "company") if c in data.items.columns):
        val = data.items.select("item_id", pl.col(attr).alias("__attr"))
        eng = engaged.join(val, on="item_id", how="inner").filter(pl.col("__attr").is_not_null())
        qa = out.select("__q", "member_id", "item_id", "cutoff").join(val, on="item_id", how="left")
        c = _counts_before(qa.filter(pl.col("__attr").is_not_null()), eng, ["member_id", "__attr"], "__n")
        qa = qa.join(c, on=["member_id", "__attr", "cutoff"], how="left")
        out = out.join(qa.select("__q", pl.col("__n").fill_null(0).alias(f"member_{attr}_engaged")),
                       on="__q", how="left")
    first = ev.group_by("member_id").agg(pl.col("timestamp").min().alias("__first"))
    out = out.join(first, on="member_id", how="left")
    # rates shrink toward the task's positive rate over everybody's events before the cutoff
    prior = (pl.col("task_pos") + 1.0) / (pl.col("task_events") + 2.0)
    a = cfg.rate_prior_strength
    out = out.with_columns(
        _days(pl.col("cutoff"), pl.col("item_events_last")).alias("item_days_since_event"),
        _days(pl.col("cutoff"), pl.col("member_events_last")).alias("member_days_since_event"),
        pl.when(pl.col("__first") < pl.col("cutoff"))
        .then(_days(pl.col("cutoff"), pl.col("__first"))).alias("member_days_active"),
        ((pl.col("item_task_pos") + a * prior) / (pl.col("item_task_events") + a)).alias("item_task_rate"),
        ((pl.col("member_task_pos") + a * prior) / (pl.col("member_task_events") + a)).alias("member_task_rate"),
        *[(pl.col(f"member_{c}_engaged") / pl.col("member_engaged").clip(1)).alias(f"member_{c}_share")
          for c in ("industry", "topic", "company") if c in data.items.columns],
    ).drop("item_events_last", "member_events_last", "__first", "task_pos", "task_events")
    out = out.join(_profile_matches(q.select("__q", "member_id", "item_id", "cutoff"), data.members, data.items,
                                    cfg.match_fields),
                   on="__q", how="left")
    return out.sort("__q").drop("__q")


def feature_names(features: pl.DataFrame, queries_columns: Sequence[str]) -> list[str]:
    """The feature columns of a :func:`point_in_time_features` frame."""
    return [c for c in features.columns if c not in set(queries_columns)]


def id_count_features(names: Sequence[str]) -> list[str]:
    """The :data:`ID_COUNT_FEATURES` among ``names`` (``lightgbm_ids``' inputs besides the ids)."""
    windowed = re.compile(rf"^({'|'.join(ID_COUNT_FEATURES)})(_[0-9.]+d)?$")
    return [n for n in names if windowed.match(n)]
