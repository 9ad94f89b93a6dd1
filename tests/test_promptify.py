"""Promptification: leakage, token budget, styles, registry validation, determinism, Ray Data."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from components.config import ConfigError, PromptifyConfig, SplitConfig
from components.data.split import split_dataset
from components.data.tables import write_table
from components.promptify.examples import PromptBuilder, prepare_member_table
from components.promptify.tasks import load_tasks
from components.promptify.tokenizer import TokenizerError, answer_token_ids, train_bpe_tokenizer
from components.promptify.verbalize import STYLES

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TASKS_YAML = """
tasks:
  - id: toy_click
    domain: toy
    item_type: thing
    surface: shop
    positive_actions: [click]
    negative_actions: [skip]
    instruction: Predict whether the member will click the candidate thing.
    question: Will the member click this thing?
  - id: toy_click_sampled
    domain: toy
    item_type: thing
    positive_actions: [click]
    negatives: sampled
    held_out: true
    instruction: Predict whether the member will click the candidate thing anywhere.
    question: Will the member click this thing?
"""


def _epoch(ts: datetime) -> int:
    return int(ts.timestamp())


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A world where every event has its own item titled ``EVT<epoch seconds>``: any
    history line names its event's exact time, so leakage is visible in the text."""
    root = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(0)
    events, items = [], []
    for m in range(24):
        n = int(rng.integers(0, 60))
        for k in range(n):
            ts = T0 + timedelta(hours=int(rng.integers(0, 24 * 90)), minutes=k)
            iid = f"i{m}_{k}"
            items.append((iid, "thing", f"EVT{_epoch(ts)}", f"a {'long ' * (k % 7)}description", ts - timedelta(days=1)))
            events.append((f"m{m}", iid, "shop" if k % 3 else "mail", ["click", "skip", "view"][k % 3], ts))
    write_table(pl.DataFrame({"member_id": [f"m{m}" for m in range(24)],
                              "headline": [f"Person {m}" for m in range(24)],
                              "skills": [["x", "y"]] * 24}), root / "valid" / "members")
    write_table(pl.DataFrame(items, schema=["item_id", "item_type", "title", "text", "created_at"], orient="row"),
                root / "valid" / "items")
    write_table(pl.DataFrame(events, schema=["member_id", "item_id", "surface", "action", "timestamp"], orient="row"),
                root / "valid" / "interactions")
    split_dataset(root / "valid", root / "split", SplitConfig())
    tasks_file = root / "tasks.yaml"
    tasks_file.write_text(TASKS_YAML)
    tasks = load_tasks(tasks_file).tasks
    cfg = PromptifyConfig(history_token_budget=120, history_exclude_actions=[], blocks=3,
                          questions_per_prompt=4, sampled_negatives=3)
    prepared, _ = prepare_member_table(root / "split", tasks, cfg, root / "prep")
    texts = pl.read_parquet(prepared.members_dir)["hist_markdown"].explode().drop_nulls().to_list()
    tok_dir = train_bpe_tokenizer(texts * 3 + [TASKS_YAML] * 5, 800, root / "tok")
    return {"root": root, "tasks": tasks, "cfg": cfg, "prepared": prepared, "tok": tok_dir}


def _build(toy, cfg=None, batch_rows=None):
    builder = PromptBuilder(str(toy["tok"]), toy["prepared"], toy["tasks"], cfg or toy["cfg"])
    table = pq.read_table(sorted(toy["prepared"].members_dir.glob("*.parquet")))
    if batch_rows is None:
        return pl.from_arrow(builder(table))
    parts = [pl.from_arrow(builder(table.slice(i, batch_rows))) for i in range(0, table.num_rows, batch_rows)]
    return pl.concat(parts)


def _history_section(prefix: str, style: str) -> str:
    if style == "markdown":
        return prefix.split("## Past activity\n", 1)[1].split("\n\n## Question", 1)[0]
    if style == "compact":
        return prefix.split("history:\n", 1)[1].split("\nquestion:", 1)[0]
    body = prefix.split("\n\n")
    return body[2]  # instruction, about, history, question


def test_no_event_at_or_after_the_cutoff_appears(toy):
    ex = _build(toy)
    assert ex.height > 50
    checked = 0
    for row in ex.iter_rows(named=True):
        cutoff = _epoch(row["cutoff"])
        for stamp in re.findall(r"EVT(\d+)", row["prefix"]):
            assert int(stamp) < cutoff, f"{row['example_id']}: event at {stamp} >= cutoff {cutoff}"
            checked += 1
        # every candidate is a question at or after the cutoff
        for cand in row["candidates"]:
            stamps = re.findall(r"EVT(\d+)", cand)
            if stamps and row["n_sampled_negatives"] == 0:
                assert int(stamps[0]) >= cutoff
    assert checked > 100


def test_history_within_budget_and_most_recent_kept(toy):
    from components.promptify.tokenizer import load_tokenizer

    tok = load_tokenizer(toy["tok"])
    budget = toy["cfg"].history_token_budget
    ex = _build(toy)
    hist = pl.read_parquet(toy["prepared"].members_dir).select("member_id", "hist_time")
    times = {m: [_epoch(t) for t in ts or []] for m, ts in hist.iter_rows()}
    truncated = 0
    for row in ex.iter_rows(named=True):
        section = _history_section(row["prefix"], row["style"])
        n_tokens = len(tok.encode(section, add_special_tokens=False))
        assert n_tokens == row["history_tokens"] <= budget
        cutoff = _epoch(row["cutoff"])
        prior = [t for t in times[row["member_id"]] if t < cutoff]
        assert row["n_prior_events"] == len(prior)
        kept = sorted(int(s) for s in re.findall(r"EVT(\d+)", section))
        assert kept == sorted(prior)[len(prior) - len(kept):] if kept else True  # the most recent
        assert len(kept) == row["n_history_kept"]
        truncated += row["n_history_kept"] < row["n_prior_events"]
    assert truncated > 10, "the budget never bit: the test would not catch a broken cut"


def test_every_style_is_used_and_recognizable(toy):
    ex = _build(toy)
    train = ex.filter(pl.col("split") == "train")
    assert set(train["style"]) == set(STYLES)
    assert set(ex.filter(pl.col("split") != "train")["style"]) == {toy["cfg"].eval_style}
    marks = {"markdown": "## Instruction", "compact": "instruction: ", "narrative": "About the member:"}
    for style, mark in marks.items():
        assert all(mark in p for p in train.filter(pl.col("style") == style)["prefix"])
    assert all(c.endswith("Answer:") for cs in ex["candidates"] for c in cs)


def test_held_out_tasks_never_train_and_sampled_negatives_are_marked(toy):
    ex = _build(toy)
    held = ex.filter(pl.col("task_id") == "toy_click_sampled")
    assert held.height and set(held["split"]) <= {"valid", "test"}
    assert held["held_out"].all()
    assert held["n_sampled_negatives"].sum() > 0
    # labels line up with candidates
    assert (ex["candidates"].list.len() == ex["labels"].list.len()).all()
    assert (ex["candidate_item_ids"].list.len() == ex["labels"].list.len()).all()


def test_same_seed_same_output_whatever_the_batching(toy):
    a = _build(toy).sort("example_id")
    b = _build(toy, batch_rows=5).sort("example_id")
    assert a.equals(b)
    c = _build(toy, cfg=toy["cfg"].model_copy(update={"seed": 1})).sort("example_id")
    assert not a.equals(c)


def test_bad_task_yaml_names_the_task_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TASKS_YAML.replace("positive_actions: [click]\n    negative_actions", "positve_actions: [click]\n    negative_actions", 1))
    with pytest.raises(ConfigError) as err:
        load_tasks(bad)
    msg = str(err.value)
    assert "toy_click" in msg and "positve_actions" in msg and "positive_actions" in msg
    dup = tmp_path / "dup.yaml"
    dup.write_text(TASKS_YAML.replace("toy_click_sampled", "toy_click"))
    with pytest.raises(ConfigError, match="toy_click.*twice"):
        load_tasks(dup)


def test_builtin_registry_is_valid_and_large_enough():
    reg = load_tasks()
    assert len(reg.tasks) >= 30
    pro = reg.for_domain("professional")
    held = [t for t in pro if t.held_out]
    assert len(held) >= 4
    trained = [t for t in pro if not t.held_out]
    # held out really means new: an action, a surface and an item type no trained task uses
    trained_actions = {a for t in trained for a in t.positive_actions + t.negative_actions}
    assert any(set(t.positive_actions) - trained_actions for t in held)
    assert any(t.surface not in {x.surface for x in trained} for t in held)
    assert any(t.item_type not in {x.item_type for x in trained} for t in held)
    assert any(t.steering for t in pro)
    assert reg.for_domain("movielens")


def test_answer_tokens_must_be_single_tokens(toy, tmp_path):
    from components.promptify.tokenizer import load_tokenizer

    assert len(set(answer_token_ids(load_tokenizer(toy["tok"])))) == 2
    with pytest.raises(TokenizerError, match="must be 1"):
        answer_token_ids(load_tokenizer(toy["tok"]), yes=" Absolutely-certainly")


def test_ray_data_two_workers_equal_one_worker(ray_local, toy, tmp_path):
    from pipelines.promptify_job import run_promptify_job

    outs = []
    for workers in (1, 2):
        dest = run_promptify_job(toy["prepared"], toy["tok"], toy["tasks"], toy["cfg"],
                                 tmp_path / f"w{workers}", batch_size=4, concurrency=workers)
        outs.append(pl.read_parquet(dest).sort("example_id"))
    assert outs[0].height > 50
    assert outs[0].equals(outs[1])
    assert outs[0].sort("example_id").equals(_build(toy).sort("example_id"))


def test_every_labeled_event_is_a_question_or_a_counted_drop(toy):
    from components.promptify.examples import example_accounting, prepare_member_table

    cfg = toy["cfg"].model_copy(update={"max_prompts_per_member_task": 1, "max_eval_candidates": 3,
                                        "negatives_per_positive": 0.5,
                                        "negative_only_prompt_rate": 0.3})
    prepared, stats = prepare_member_table(toy["root"] / "split", toy["tasks"], cfg, toy["root"] / "prep2")
    toy2 = {**toy, "prepared": prepared}
    acc = example_accounting(_build(toy2, cfg=cfg), stats)
    assert acc["balanced"] == 1.0, acc
    # every kind of drop happened, so the balance is not trivially true (the toy world has
    # one item per event, so merging is checked on its own below)
    for reason in ("over_candidate_cap", "negatives_subsampled", "prompts_over_member_task_cap",
                   "negative_only_prompts"):
        assert acc[f"dropped.{reason}"] > 0, reason
    assert acc["labeled_events"] == stats["prepare.labeled_events"] > acc["questions_logged"]


def test_training_prompts_are_built_around_positives(toy):
    """Chunks of logged events without a positive are mostly dropped (counted): with rate 0
    every training prompt holds a positive, except a member's one fallback prompt."""
    from components.promptify.examples import example_accounting, prepare_member_table

    cfg = toy["cfg"].model_copy(update={"negative_only_prompt_rate": 0.0})
    prepared, stats = prepare_member_table(toy["root"] / "split", toy["tasks"], cfg, toy["root"] / "prep3")
    ex = _build({**toy, "prepared": prepared}, cfg=cfg)
    train = ex.filter(pl.col("split") == "train")
    no_pos = train.filter(pl.col("labels").list.sum() == 0)
    # the only negative-only training prompts are fallbacks: the member's single prompt
    per_member = ex.group_by("member_id").len()
    assert no_pos.join(per_member, on="member_id")["len"].to_list() == [1] * no_pos.height
    # (the toy's clicks are all on another surface, so here every train chunk is negative-only)
    acc = example_accounting(ex, stats)
    assert acc["balanced"] == 1.0 and acc["dropped.negative_only_prompts"] > 0, acc
    # keeping them all (rate 1) gives more, mostly negative-only, training prompts
    everything = _build({**toy, "prepared": prepared},
                        cfg=cfg.model_copy(update={"negative_only_prompt_rate": 1.0}))
    all_train = everything.filter(pl.col("split") == "train")
    assert all_train.height > train.height
    assert example_accounting(everything, stats)["dropped.negative_only_prompts"] == 0


def test_question_sets_keep_chunks_with_a_positive_first(toy):
    cfg = toy["cfg"].model_copy(update={"questions_per_prompt": 2, "negative_only_prompt_rate": 0.0,
                                        "max_prompts_per_member_task": 2})
    builder = PromptBuilder(str(toy["tok"]), toy["prepared"], toy["tasks"], cfg)
    labels = [0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0]  # chunks: 00 01 00 10 00 10
    row = {"cand_label": labels}
    chunks, capped, dropped = builder._question_sets(np.random.default_rng(0), "train",
                                                     list(range(12)), row)
    assert all(any(labels[i] for i in c) for c in chunks) and len(chunks) == 2
    assert capped == 2  # the third chunk with a positive, over the cap of 2
    assert [c for c in dropped] == [[0, 1], [4, 5], [8, 9]]
    # rate 1 keeps negative-only chunks, but the cap still prefers those with a positive
    keep_all = builder.cfg.model_copy(update={"negative_only_prompt_rate": 1.0})
    builder.cfg = keep_all
    chunks, capped, dropped = builder._question_sets(np.random.default_rng(0), "train",
                                                     list(range(12)), row)
    assert dropped == [] and capped == 8 and all(any(labels[i] for i in c) for c in chunks)
    # evaluation lists are never chunked or dropped
    assert builder._question_sets(np.random.default_rng(0), "test", list(range(12)), row) == \
        ([list(range(12))], 0, [])


def test_events_on_the_same_item_merge_into_one_question(toy):
    builder = PromptBuilder(str(toy["tok"]), toy["prepared"], toy["tasks"], toy["cfg"])
    row = {"cand_item": ["a", "b", "a", "c", "a"], "cand_label": [0, 0, 1, 0, 0]}
    items, labels, merged, over = builder._dedupe([0, 1, 2, 3, 4], row)
    assert (items, labels, merged, over) == (["a", "b", "c"], [1, 0, 0], 2, 0)


def test_a_request_can_carry_a_custom_instruction(toy):
    from components.promptify.online import candidate_segments, request_prefix
    from components.promptify.tokenizer import load_tokenizer

    tok = load_tokenizer(toy["tok"])
    item = {"item_id": "j1", "item_type": "job", "title": "Data Engineer", "skills": ["SQL"]}
    events = [{"item": {**item, "item_id": f"old{k}", "title": f"EVT{k}"}, "action": "apply",
               "timestamp": T0 + timedelta(days=k)} for k in range(200)]
    now = T0 + timedelta(days=150)
    prefix, kept = request_prefix(
        {"headline": "Engineer", "skills": ["SQL", "Python"]}, events,
        "Focus on skills more than other criteria.", "Is this job a good fit?", tok,
        now=now, history_token_budget=60)
    cands = candidate_segments([item])
    assert "Focus on skills more than other criteria." in prefix
    stamps = [int(s) for s in re.findall(r"EVT(\d+)", prefix)]
    assert stamps and max(stamps) == 149  # the most recent event before `now`, none after
    assert kept == len(stamps)
    assert len(tok.encode(_history_section(prefix, "markdown"), add_special_tokens=False)) <= 60
    assert cands[0].endswith("Answer:") and "Data Engineer" in cands[0]


def test_sampled_negatives_are_items_shown_just_before_the_cutoff():
    from datetime import UTC, datetime, timedelta

    import numpy as np

    from components.promptify.negatives import NegativeSampler

    t0 = datetime(2026, 1, 10, tzinfo=UTC)
    rows = [(f"old{i}", "job", "jobs-home", t0 - timedelta(days=30)) for i in range(20)]
    rows += [(f"fresh{i}", "job", "jobs-home", t0 - timedelta(hours=i + 1)) for i in range(20)]
    rows += [(f"future{i}", "job", "jobs-home", t0 + timedelta(hours=i)) for i in range(20)]
    rows += [(f"search{i}", "job", "job-search", t0 - timedelta(hours=2)) for i in range(5)]
    pool = pl.DataFrame(rows, schema=["item_id", "item_type", "surface", "timestamp"], orient="row")
    sampler = NegativeSampler(pool, window_days=3)
    cut = int(t0.timestamp() * 1e6)
    got = sampler.sample(np.random.default_rng(0), "job", "jobs-home", cut, {"fresh0"}, 6)
    assert len(got) == 6 == len(set(got))
    assert all(g.startswith("fresh") and g != "fresh0" for g in got)  # shown in the window, not excluded
    assert got == sampler.sample(np.random.default_rng(0), "job", "jobs-home", cut, {"fresh0"}, 6)
    # too few in the window: it widens to older impressions, never to later ones
    many = sampler.sample(np.random.default_rng(1), "job", "jobs-home", cut, set(), 30)
    assert len(many) == 30 and not any(g.startswith("future") for g in many)
    assert any(g.startswith("old") for g in many)
    # any surface when none is asked for; nothing before the first impression
    assert any(g.startswith("search") for g in sampler.sample(np.random.default_rng(2), "job", None, cut, set(), 25))
    assert sampler.sample(np.random.default_rng(0), "job", "jobs-home", cut - 40 * 86_400_000_000, set(), 3) == []


def test_match_hints_end_every_candidate_text_and_count_only_prior_history(toy, tmp_path):
    cfg = toy["cfg"].model_copy(update={"match_hints": True})
    prepared, _ = prepare_member_table(toy["root"] / "split", toy["tasks"], cfg, tmp_path / "prep")
    assert prepared.match_hints is not None and prepared.match_hints.exists()
    builder = PromptBuilder(str(toy["tok"]), prepared, toy["tasks"], cfg)
    ex = pl.from_arrow(builder(pq.read_table(sorted(prepared.members_dir.glob("*.parquet")))))
    md = ex.filter(pl.col("style") == "markdown")
    assert md.height > 0
    for cands in md["candidates"]:
        for c in cands:
            # the toy tables share `skills` (members) only with nothing: no profile match
            assert "\n- Matches your profile: none" in c, c
    off = _build(toy)
    assert not any("Matches your profile" in c for cs in off["candidates"] for c in cs)


def test_question_in_candidates_repeats_each_prompts_question_before_the_cue(toy):
    from components.promptify.verbalize import swap_candidate_question

    on = _build(toy, toy["cfg"].model_copy(update={"question_in_candidates": True}))
    off = _build(toy)
    questions = {t.id: t.question for t in toy["tasks"]}
    assert on.height == off.height > 0
    for row, plain in zip(on.iter_rows(named=True), off.iter_rows(named=True), strict=True):
        q = questions[row["task_id"]]
        assert row["prefix"] == plain["prefix"]  # the prefix is unchanged: only the cue grows
        for c, p in zip(row["candidates"], plain["candidates"], strict=True):
            assert c == p[: -len("Answer:")] + f"{q} Answer:"
            assert swap_candidate_question(c, q, "Other?") == p[: -len("Answer:")] + "Other? Answer:"
            assert swap_candidate_question(p, q, "Other?") == p  # nothing to swap without it


def test_members_without_profile_fields_get_prompts_that_say_so(toy, tmp_path):
    import shutil

    from components.promptify.verbalize import NO_PROFILE

    src = toy["root"] / "valid"
    for t in ("items", "interactions"):
        shutil.copytree(src / t, tmp_path / "valid" / t)
    ids = pl.read_parquet(src / "members").select("member_id")  # a log with no profiles
    write_table(ids, tmp_path / "valid" / "members")
    split_dataset(tmp_path / "valid", tmp_path / "split", SplitConfig())
    prepared, _ = prepare_member_table(tmp_path / "split", toy["tasks"], toy["cfg"], tmp_path / "prep")
    builder = PromptBuilder(str(toy["tok"]), prepared, toy["tasks"], toy["cfg"])
    ex = pl.from_arrow(builder(pq.read_table(sorted(prepared.members_dir.glob("*.parquet")))))
    assert ex.height > 0 and all(NO_PROFILE in p for p in ex["prefix"])


def test_a_tokenizer_refitted_on_built_prompts_encodes_them_shorter(toy, tmp_path):
    from components.promptify.tokenizer import load_tokenizer, prompt_texts

    texts = pl.read_parquet(toy["prepared"].members_dir)["hist_markdown"].explode().drop_nulls().to_list()
    extra = prompt_texts(toy["prepared"], toy["tok"], toy["tasks"], toy["cfg"], members=12, seed=0)
    assert extra and extra == prompt_texts(toy["prepared"], toy["tok"], toy["tasks"], toy["cfg"], 12, 0)
    assert any("Answer:" in t for t in extra)  # the candidate cue is rendered there, not in the corpus
    refit = load_tokenizer(train_bpe_tokenizer(texts * 3 + [TASKS_YAML] * 5 + extra, 800, tmp_path / "refit"))
    first = load_tokenizer(toy["tok"])
    built = _build(toy)  # every member's prompts, most of them never in `extra`
    sample = built["prefix"].to_list() + built["candidates"].explode().to_list()

    def n_tokens(tok):
        return sum(len(tok.encode(t, add_special_tokens=False)) for t in sample)

    assert n_tokens(refit) < 0.95 * n_tokens(first)
    assert len(refit.encode("\nAnswer:", add_special_tokens=False)) < len(first.encode("\nAnswer:", add_special_tokens=False))
