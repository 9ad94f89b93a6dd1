"""The synthetic professional world: real Parquet files under tmp_path, no mocks.

What is checked is what downstream work relies on: same config => same files, the
canonical schema, a heavy-tailed activity with cold and heavy members, no event before
its member joined or its item existed, engagement that the *text* predicts (skills,
location, industry), one part file per chunk, memory that does not grow with members,
and a utility that can be recomputed and re-weighted for instruction steering.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.config import SyntheticWorldConfig
from components.data import synthetic as S
from components.data.schema import INTERACTIONS, ITEMS, MEMBERS, TIMESTAMP_TYPE, type_family
from components.data.tables import read_table, table_files

REPO_ROOT = Path(__file__).resolve().parents[1]
POSITIVE = [a for acts in S.POSITIVE_ACTIONS.values() for a in acts]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[SyntheticWorldConfig, Path, dict]:
    """3,000 members in 3 chunks: big enough for rates, small enough for ~1 s."""
    cfg = SyntheticWorldConfig(members=3000, members_per_file=1000, seed=7)
    out = tmp_path_factory.mktemp("world")
    return cfg, out, S.generate_world(cfg, out)


@pytest.fixture(scope="module")
def joined(world) -> pl.DataFrame:
    """Interactions joined with the member and item rows they point to."""
    _, out, _ = world
    m, i, x = (read_table(out, t) for t in ("members", "items", "interactions"))
    return x.join(
        m.select(
            "member_id",
            "joined_at",
            pl.col("skills").alias("m_skills"),
            pl.col("location").alias("m_location"),
            pl.col("industry").alias("m_industry"),
        ),
        on="member_id",
        how="left",
    ).join(
        i.select(
            "item_id",
            "item_type",
            "created_at",
            "expires_at",
            "workplace",
            pl.col("skills").alias("i_skills"),
            pl.col("location").alias("i_location"),
            pl.col("industry").alias("i_industry"),
        ),
        on="item_id",
        how="left",
    )


def _frames(out: Path) -> dict[str, pl.DataFrame]:
    return {t: read_table(out, t) for t in ("members", "items", "interactions")}


def test_same_config_same_world_other_seed_other_world(tmp_path):
    cfg = SyntheticWorldConfig(members=300, members_per_file=100, seed=3)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    S.generate_world(cfg, a)
    S.generate_world(cfg, b)
    S.generate_world(cfg.model_copy(update={"seed": 4}), c)
    fa, fb, fc = _frames(a), _frames(b), _frames(c)
    for t in fa:
        assert fa[t].equals(fb[t]), f"table {t} differs between two runs of one config"
    assert not fa["interactions"].equals(fc["interactions"])
    assert not fa["members"].equals(fc["members"])
    assert not fa["items"].equals(fc["items"])


def test_rerun_into_same_dir_leaves_no_stale_parts(tmp_path):
    S.generate_world(SyntheticWorldConfig(members=300, members_per_file=100), tmp_path)
    S.generate_world(SyntheticWorldConfig(members=100, members_per_file=100), tmp_path)
    assert len(table_files(tmp_path, "interactions")) == 1
    assert read_table(tmp_path, "members").height == 100


#: A tiny world (3 chunks) whose digests were recorded from the single-module generator
#: (components/data/synthetic.py before issue 16.3 split it into a package; polars 2.1.0,
#: pyarrow 25.0.1, numpy 2.4.6). FILES hashes every part file's bytes; CONTENT hashes the
#: rows (timestamps as epoch microseconds), so it survives a change of Parquet encoding.
_PINNED_WORLD = SyntheticWorldConfig(
    members=60, members_per_file=25, companies=12, jobs=40, posts=50, courses=15, days=14, seed=3
)
_PINNED_POLARS = "2.1.0"
_PINNED_FILES_SHA256 = "a6ae13ce23d011f6bcd127c1af543af3dc1916aab3f2afb023fbb6f51e7824c3"
_PINNED_CONTENT_SHA256 = "817f2742be88527360e7d50b04f955889a6b31318ce01354c47cd5dff666bec6"


def _world_digests(out: Path) -> tuple[str, str]:
    """(sha256 of every part file's path and bytes, sha256 of every part file's rows)."""
    files, content = hashlib.sha256(), hashlib.sha256()
    for f in sorted(out.rglob("*.parquet")):
        name = f.relative_to(out).as_posix().encode() + b"\0"
        files.update(name + f.read_bytes())
        df = pl.read_parquet(f).with_columns(pl.col(pl.Datetime).dt.epoch("us"))
        content.update(name + json.dumps([df.columns, df.rows()]).encode())
    return files.hexdigest(), content.hexdigest()


def test_same_seed_gives_the_recorded_world(tmp_path):
    """Refactors of the generator keep the world: same rows always, same bytes on the
    recorded polars (another polars may encode Parquet differently)."""
    S.generate_world(_PINNED_WORLD, tmp_path)
    files, content = _world_digests(tmp_path)
    assert content == _PINNED_CONTENT_SHA256, (
        "the synthetic world's rows changed for the same seed: a change of random draws or "
        "of text templates (intended? then re-record the digests and say so in the commit)"
    )
    if pl.__version__ == _PINNED_POLARS:
        assert files == _PINNED_FILES_SHA256, "same rows, other Parquet bytes: write options?"


def test_canonical_schema(world):
    _, out, summary = world
    for table in (MEMBERS, ITEMS, INTERACTIONS):
        for path in table_files(out, table.name):
            schema = pq.read_schema(path)
            for field in table.canonical:
                assert field.name in schema.names, f"{path}: {field.name} missing"
                got = schema.field(field.name).type
                assert type_family(got) == type_family(field.type), (path, field.name, got)
                if pa.types.is_timestamp(field.type):
                    assert got == field.type, (path, field.name, got)
            for name, dtype in table.optional.items():
                if name in schema.names:
                    assert schema.field(name).type == dtype, (path, name)
    x = read_table(out, "interactions")
    assert x["value"].dtype == pl.Float64 and x["value"].null_count() == x.height
    assert x.schema["timestamp"] == pl.Datetime("us", "UTC")
    m, i = read_table(out, "members"), read_table(out, "items")
    assert str(m.schema["joined_at"]) == str(pl.Datetime("us", "UTC"))
    assert pq.read_schema(table_files(out, "members")[0]).field("joined_at").type == TIMESTAMP_TYPE
    assert m.schema["skills"] == pl.List(pl.Utf8) and i.schema["skills"] == pl.List(pl.Utf8)
    assert m["member_id"].str.contains(r"^m\d{7}$").all() and m["member_id"].is_unique().all()
    assert i["item_id"].is_unique().all() and i["title"].null_count() == 0
    assert set(i["item_type"].unique()) == {"job", "post", "course"}
    assert set(x["action"].unique()) <= set(S.ALL_ACTIONS)
    assert set(x["surface"].unique()) == set(S.SURFACE_NAMES)
    # every action is legal for the type of item it was taken on, on one of its surfaces
    per = x.join(i.select("item_id", "item_type"), on="item_id")
    for t in S.ITEM_TYPES:
        sub = per.filter(pl.col("item_type") == t)
        assert set(sub["action"].unique()) <= set(S.ACTIONS[t]), t
        assert set(sub["surface"].unique()) <= set(S.SURFACES[t]), t
    assert summary["rows"] == {"members": m.height, "items": i.height, "interactions": x.height}


def test_validation_keeps_every_row(world, tmp_path):
    """The world is clean: the validate stage quarantines nothing (unique keys included)."""
    from components.data.validate import validate_dataset

    _, out, summary = world
    report = validate_dataset(out, tmp_path / "clean", S.ALL_ACTIONS)
    for name, t in report.tables.items():
        assert t.rows_quarantined == 0, (name, t.quarantined)
    assert report.tables["interactions"].rows_kept == summary["rows"]["interactions"]


def test_profiles_and_items_are_consistent(world):
    _, out, _ = world
    m, i = read_table(out, "members"), read_table(out, "items")
    lens = m["skills"].list.len()
    assert lens.min() >= 4 and lens.max() <= 12
    for k, sen in enumerate(S.SENIORITIES):
        lo, hi = S.YEARS_RANGE[k]
        years = m.filter(pl.col("seniority") == sen)["years_experience"]
        assert years.len() > 0 and years.min() >= lo and years.max() <= hi, sen
    assert m["industry"].n_unique() == len(S.INDUSTRIES)
    assert m["location"].n_unique() >= 20
    assert (m.select(pl.col("headline").str.contains(pl.col("title"), literal=True)))[
        "headline"
    ].all()
    start = S.Clock.from_config(world[0]).start_us
    joined_us = m["joined_at"].dt.epoch("us")
    late = (joined_us >= start).mean()
    assert 0.15 < late < 0.45, "some members must join during the period (cold later)"
    jobs = i.filter(pl.col("item_type") == "job")
    assert (jobs["expires_at"] > jobs["created_at"]).all()
    assert (jobs["created_at"].dt.epoch("us") >= start).mean() > 0.7, "new jobs keep appearing"
    assert i.filter(pl.col("item_type") == "course")["level"].null_count() == 0
    assert i.filter(pl.col("item_type") == "post")["topic"].null_count() == 0


def test_heavy_tailed_activity(world):
    _, out, summary = world
    x, m = read_table(out, "interactions"), read_table(out, "members")
    per = m.select("member_id").join(
        x.group_by("member_id").len(), on="member_id", how="left"
    )["len"].fill_null(0)
    buckets = {
        "0-5": int((per <= 5).sum()),
        "6-10": int(((per >= 6) & (per <= 10)).sum()),
        "11-100": int(((per >= 11) & (per <= 100)).sum()),
        ">100": int((per > 100).sum()),
    }
    assert buckets == summary["members_by_activity"]
    assert 0.15 <= buckets["0-5"] / m.height <= 0.35, buckets
    assert buckets[">100"] >= 0.02 * m.height, buckets
    assert buckets["11-100"] > buckets["0-5"], buckets
    assert per.max() >= 300, "the tail reaches the hundreds"


def test_no_event_before_join_creation_or_after_expiry(joined):
    assert joined["joined_at"].null_count() == 0 and joined["created_at"].null_count() == 0
    assert (joined["timestamp"] > joined["joined_at"]).all()
    assert (joined["timestamp"] > joined["created_at"]).all()
    jobs = joined.filter(pl.col("item_type") == "job")
    assert (jobs["timestamp"] < jobs["expires_at"]).all()


def _rate(df: pl.DataFrame, actions: list[str]) -> float:
    return float(df["action"].is_in(actions).mean())


def test_text_carries_the_signal(joined):
    """Apply rates follow what the profile and job texts say: skills, city, industry."""
    jobs = joined.filter(pl.col("item_type") == "job").with_columns(
        (
            pl.col("m_skills").list.set_intersection("i_skills").list.len()
            / pl.col("i_skills").list.len()
        ).alias("overlap")
    )
    high, low = jobs.filter(pl.col("overlap") >= 0.5), jobs.filter(pl.col("overlap") == 0)
    assert high.height > 500 and low.height > 500
    assert _rate(high, ["apply"]) > 4 * _rate(low, ["apply"])
    onsite = jobs.filter(pl.col("workplace") != "Remote")
    same = onsite.filter(pl.col("m_location") == pl.col("i_location"))
    other = onsite.filter(pl.col("m_location") != pl.col("i_location"))
    assert _rate(same, ["apply", "save"]) > 2 * _rate(other, ["apply", "save"])
    for t in ("post", "course"):
        sub = joined.filter(pl.col("item_type") == t)
        same_ind = sub.filter(pl.col("m_industry") == pl.col("i_industry"))
        other_ind = sub.filter(pl.col("m_industry") != pl.col("i_industry"))
        assert _rate(same_ind, POSITIVE) > 2 * _rate(other_ind, POSITIVE), t
    # positives are a minority of impressions, the natural negatives the majority
    assert 0.03 < _rate(jobs, ["apply", "save"]) < 0.2
    assert _rate(joined, ["impression"]) > 0.6


def test_job_search_shows_matching_jobs(joined):
    jobs = joined.filter(pl.col("item_type") == "job").with_columns(
        pl.col("m_skills").list.set_intersection("i_skills").list.len().alias("shared")
    )
    search = jobs.filter(pl.col("surface") == "job-search")["shared"].mean()
    notif = jobs.filter(pl.col("surface") == "notifications")["shared"].mean()
    assert search > 1.5 * notif


def test_one_part_file_per_chunk(world):
    _, out, summary = world
    assert len(table_files(out, "members")) == 3
    assert len(table_files(out, "interactions")) == 3
    assert len(table_files(out, "items")) == 1
    assert summary["files"] == {"members": 3, "items": 1, "interactions": 3}
    first = pl.read_parquet(table_files(out, "members")[0])
    assert first.height == 1000 and first["member_id"][0] == "m0000001"
    # a chunk's interactions belong to that chunk's members
    x0 = pl.read_parquet(table_files(out, "interactions")[0])
    assert x0["member_id"].is_in(first["member_id"].implode()).all()


def test_utility_components_relabel_and_steering(world):
    cfg, out, _ = world
    m, i = read_table(out, "members"), read_table(out, "items")
    x = read_table(out, "interactions").head(40_000)
    comps = S.utility_components(m, i, x, cfg)
    assert set(S.COMPONENTS) <= set(comps.columns) and comps.height == x.height
    jobs = comps.filter(pl.col("item_type") == "job")
    mean_u = dict(jobs.group_by("action").agg(pl.col("utility").mean()).iter_rows())
    assert mean_u["apply"] > mean_u["view"] > mean_u["impression"] > mean_u["dismiss"]
    # the utility is the explicit weighted sum of the named components
    w = S.UTILITY_WEIGHTS["job"]
    manual = sum(w[c] * jobs[c] for c in S.COMPONENTS)
    assert np.allclose(jobs["utility"].to_numpy(), manual.to_numpy())
    assert np.allclose(S.utility(jobs).to_numpy(), jobs["utility"].to_numpy())
    # an instruction "focus on skills and location" relabels by those two alone
    steer = S.steering_weights(["skills", "location"])
    steered = S.utility(comps, steer).to_numpy()
    expect = np.where(
        comps["item_type"] == "job",
        w["skills"] * comps["skills"] + w["location"] * comps["location"],
        np.nan,
    )
    is_job = (comps["item_type"] == "job").to_numpy()
    assert np.allclose(steered[is_job], expect[is_job])
    assert steer["course"]["location"] == 1.0 and steer["post"]["popularity"] == 0.0
    with pytest.raises(ValueError, match="'salary'"):
        S.steering_weights(["skills", "salary"])
    p = S.positive_probability(np.array([-5.0, 10.0]), "job")
    assert p[0] < 0.01 and p[1] > 0.9


def test_cli_help_and_run(tmp_path):
    help_text = subprocess.run(
        [sys.executable, "-m", "components.data.synthetic", "--help"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "--members" in help_text and "--members-per-file" in help_text
    res = subprocess.run(
        [sys.executable, "-m", "components.data.synthetic", "--members", "50", "--out",
         str(tmp_path), "--seed", "1", "--quiet"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(res.stdout)["rows"]["members"] == 50
    bad = subprocess.run(
        [sys.executable, "-m", "components.data.synthetic", "--members", "0", "--out",
         str(tmp_path), "--quiet"],
        cwd=REPO_ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode != 0 and "members" in bad.stderr


_PEAK_RSS = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _peak_rss_mb(members: int, per_file: int, out: Path) -> float:
    """Peak RSS of the CLI in a fresh process tree (ru_maxrss of its only child, KiB)."""
    cmd = [
        sys.executable, "-c", _PEAK_RSS, sys.executable, "-m", "components.data.synthetic",
        "--members", str(members), "--members-per-file", str(per_file), "--out", str(out),
        "--quiet",
    ]  # fmt: skip
    res = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return int(res.stdout.strip().splitlines()[-1]) / 1024


def test_memory_is_bounded_by_the_chunk_size(tmp_path):
    """8x the members at the same members_per_file: about the same peak memory."""
    small = _peak_rss_mb(4000, 4000, tmp_path / "small")
    large = _peak_rss_mb(32_000, 4000, tmp_path / "large")
    assert len(table_files(tmp_path / "large", "interactions")) == 8
    assert large < 1.3 * small + 50, f"peak RSS {small:.0f} MB -> {large:.0f} MB"
