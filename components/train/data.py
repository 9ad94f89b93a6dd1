"""Training data: promptified examples -> token ids with answer-only labels; member
histories -> packed causal-LM blocks. Plain torch + Polars, no Ray.

**SFT / alignment rows.** A promptify row is ``prefix, candidates[], labels[]``. The
prefix and every candidate are tokenized *separately* and concatenated as ids, exactly
as the scoring engine does (``components.model.engine.tokenize_request``; a test checks
the ids are equal), so the model is trained on the token sequences it will be scored
on. Each candidate ends with ``Answer:`` (the *cue*); the answer token (`` Yes`` /
`` No``) follows it. ``labels`` is -100 everywhere except at the answer tokens, so the
causal-LM loss only teaches the answers.

Two layouts of one prompt (``TrainDataConfig.layout``):

* ``sequential``: ``prefix c1 a1 c2 a2 ...`` read left to right (the 360Brew training
  text); candidate i sees the earlier candidates *and their true answers*.
* ``multi_item``: the same ids, but candidate i (with its answer) attends only to the
  prefix and to itself, and its positions restart at ``len(prefix)``: the attention rule
  of the multi-item scoring engine (``components/model/multi_item.py``). Training then
  sees exactly the computation serving does. Evaluation always uses this layout (with
  no answers appended), because the sequential one would show the true labels of the
  earlier candidates.

Length cap: trailing candidates are dropped until the prompt fits ``max_seq_len``; the
prefix is only cut when it alone (plus the first candidate) is too long, and then from
the left (oldest history first, the end of the prefix holds the question). Every drop
and cut is counted in :class:`TokenizeStats`: nothing disappears silently.

**CPT rows.** One document per member: profile then verbalized history lines, events
strictly before ``history_cutoff`` only (the validation start: the history of later
events is what valid/test ask about). Documents are joined with EOS and packed into
``seq_len`` blocks; with ``document_mask`` each document attends only to itself and its
positions restart at 0 (block-diagonal causal attention).

Segment ids encode both masks with one rule (the scoring engine's): token q attends to
token k iff ``k <= q and (seg[k] == 0 or seg[k] == seg[q])``. Prefix = 0, candidate i
= i, CPT document j = j + 1 (no 0, so documents never see each other), padding = -1.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import torch

from components.train.config import Layout

IGNORE_INDEX = -100
PREFIX_SEGMENT = 0
PAD_SEGMENT = -1

class TrainDataError(ValueError):
    """Training data that cannot be used; the message names the field and the fix."""


@dataclass
class TokenizeStats:
    """Row accounting of tokenization: what was kept, cut or dropped, and why."""

    prompts_in: int = 0
    prompts_kept: int = 0
    prompts_dropped_first_candidate_too_long: int = 0
    candidates_in: int = 0
    candidates_kept: int = 0
    candidates_dropped_over_length: int = 0
    prefixes_left_truncated: int = 0
    prefix_tokens_cut: int = 0
    tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def check(self) -> None:
        """The counters must add up (candidates of a dropped prompt count as dropped over
        length); an error here is a bug in this module, not in the data."""
        if self.candidates_in != (self.candidates_kept + self.candidates_dropped_over_length):
            raise AssertionError(f"candidate accounting does not add up: {self}")


@dataclass
class TokenizedPrompt:
    """One prompt as the model sees it.

    ``cue_positions[i]`` is the index of candidate i's last token (the ``Answer:`` cue):
    the logits there predict the answer, so scores and the alignment loss read them.
    ``labels`` is aligned with ``input_ids`` (the model shifts): the answer token of
    candidate i sits at ``cue_positions[i] + 1`` when answers are included.
    """

    input_ids: np.ndarray  # [T] int64
    labels: np.ndarray  # [T] int64, IGNORE_INDEX except at answer tokens
    segment_ids: np.ndarray  # [T] int64
    position_ids: np.ndarray  # [T] int64
    cue_positions: np.ndarray  # [n] int64
    answer_labels: np.ndarray  # [n] int64 0/1
    row: int  # index of the source row (for per-prompt metrics)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class PromptDataset:
    """Tokenized prompts plus the accounting of how they were made."""

    prompts: list[TokenizedPrompt]
    stats: TokenizeStats
    layout: Layout
    with_answers: bool
    example_ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> TokenizedPrompt:
        return self.prompts[i]


def encode_many(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Batch-encode without special tokens (one fast-tokenizer call)."""
    if not texts:
        return []
    return [list(x) for x in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def bos_ids(tokenizer) -> list[int]:
    """``[bos]`` for tokenizers that declare ``add_bos_token`` (Llama-style), else ``[]``;
    the same rule as the scoring engine's ``tokenize_request``."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return [bos] if getattr(tokenizer, "add_bos_token", False) and bos is not None else []


def layout_prompt(prefix_ids: Sequence[int], cand_ids: Sequence[Sequence[int]],
                  answer_labels: Sequence[int], yes_id: int, no_id: int, max_seq_len: int,
                  layout: Layout, with_answers: bool, stats: TokenizeStats, row: int = 0,
                  keep_prefix_start: int = 0) -> TokenizedPrompt | None:
    """Assemble one prompt from token ids under the length cap; ``None`` if even the
    first candidate cannot fit (counted in ``stats``).

    ``keep_prefix_start`` tokens at the very start (a BOS) survive a left-truncation.
    """
    if layout not in ("sequential", "multi_item"):
        raise TrainDataError(f"data.layout={layout!r}: use 'sequential' or 'multi_item'")
    if len(cand_ids) != len(answer_labels):
        raise TrainDataError(f"row {row}: {len(cand_ids)} candidates but "
                             f"{len(answer_labels)} labels: the promptify output is corrupt")
    stats.prompts_in += 1
    stats.candidates_in += len(cand_ids)
    extra = 1 if with_answers else 0
    if not cand_ids or len(cand_ids[0]) + extra + keep_prefix_start + 1 > max_seq_len:
        stats.prompts_dropped_first_candidate_too_long += 1
        stats.candidates_dropped_over_length += len(cand_ids)
        return None
    prefix = list(prefix_ids)
    first = len(cand_ids[0]) + extra
    if len(prefix) + first > max_seq_len:
        keep = max_seq_len - first - keep_prefix_start
        cut = len(prefix) - keep_prefix_start - keep
        prefix = prefix[:keep_prefix_start] + prefix[keep_prefix_start + cut:]
        stats.prefixes_left_truncated += 1
        stats.prefix_tokens_cut += cut
    total = len(prefix)
    n_keep = 0
    for c in cand_ids:
        if total + len(c) + extra > max_seq_len:
            break
        total += len(c) + extra
        n_keep += 1
    stats.candidates_kept += n_keep
    stats.candidates_dropped_over_length += len(cand_ids) - n_keep
    stats.prompts_kept += 1
    stats.tokens += total

    ids = np.empty(total, dtype=np.int64)
    labels = np.full(total, IGNORE_INDEX, dtype=np.int64)
    seg = np.zeros(total, dtype=np.int64)
    pos = np.arange(total, dtype=np.int64)
    cues = np.empty(n_keep, dtype=np.int64)
    p = len(prefix)
    ids[:p] = prefix
    at = p
    for i in range(n_keep):
        c = cand_ids[i]
        n = len(c) + extra
        ids[at:at + len(c)] = c
        if with_answers:
            ans = yes_id if answer_labels[i] else no_id
            ids[at + len(c)] = ans
            labels[at + len(c)] = ans
        cues[i] = at + len(c) - 1
        if layout == "multi_item":
            seg[at:at + n] = i + 1
            pos[at:at + n] = np.arange(p, p + n)
        at += n
    return TokenizedPrompt(ids, labels, seg, pos, cues,
                           np.asarray(answer_labels[:n_keep], dtype=np.int64), row)


def tokenize_prompts(rows: pl.DataFrame, tokenizer, yes_id: int, no_id: int, max_seq_len: int,
                     layout: Layout = "sequential", with_answers: bool = True) -> PromptDataset:
    """Promptify rows (``prefix``, ``candidates``, ``labels``) -> :class:`PromptDataset`.

    Tokenization follows the scoring engine's contract (prefix and each candidate apart,
    BOS before the prefix only for ``add_bos_token`` tokenizers).
    """
    for col in ("prefix", "candidates", "labels"):
        if col not in rows.columns:
            raise TrainDataError(f"promptify rows lack column {col!r} (have {rows.columns}): "
                                 f"pass the promptify stage's examples")
    stats = TokenizeStats()
    bos = bos_ids(tokenizer)
    prefixes = rows["prefix"].to_list()
    cands = rows["candidates"].to_list()
    labels = rows["labels"].to_list()
    prefix_ids = encode_many(tokenizer, prefixes)
    flat = [c for cs in cands for c in cs]
    flat_ids = encode_many(tokenizer, flat)
    prompts: list[TokenizedPrompt] = []
    ids_out: list[str] = []
    example_ids = (rows["example_id"].to_list() if "example_id" in rows.columns
                   else [str(i) for i in range(rows.height)])
    at = 0
    for r, (pids, cs, ls) in enumerate(zip(prefix_ids, cands, labels, strict=True)):
        c_ids = flat_ids[at:at + len(cs)]
        at += len(cs)
        tp = layout_prompt(bos + pids, c_ids, [int(x) for x in ls], yes_id, no_id,
                           max_seq_len, layout, with_answers, stats, row=r,
                           keep_prefix_start=len(bos))
        if tp is not None:
            prompts.append(tp)
            ids_out.append(example_ids[r])
    stats.check()
    return PromptDataset(prompts, stats, layout, with_answers, ids_out)


def read_examples(examples_dir: Path, split: str, include_held_out: bool = False,
                  limit: int | None = None) -> pl.DataFrame:
    """Promptify rows of one split, sorted by ``example_id`` (deterministic order)."""
    files = sorted(glob.glob(str(Path(examples_dir) / "*.parquet")))
    if not files:
        raise TrainDataError(f"data.examples_dir={examples_dir}: no *.parquet files; point it "
                             f"at the promptify stage's examples/ directory")
    cols = ["example_id", "split", "held_out", "prefix", "candidates", "labels"]
    df = pl.scan_parquet(files).select(cols).filter(pl.col("split") == split)
    if not include_held_out:
        df = df.filter(~pl.col("held_out"))
    df = df.sort("example_id")
    if limit is not None:
        df = df.head(limit)
    return df.collect()


# ---------------------------------------------------------------------------------- CPT


@dataclass
class CPTStats:
    """Accounting of CPT packing."""

    members_in: int = 0
    documents: int = 0
    events_kept: int = 0
    events_after_cutoff: int = 0
    tokens: int = 0
    blocks: int = 0
    padding_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class PackedDataset:
    """Fixed-length causal-LM blocks (the last one right-padded)."""

    blocks: list[TokenizedPrompt]
    stats: CPTStats

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> TokenizedPrompt:
        return self.blocks[i]


def member_documents(member_rows: pl.DataFrame, history_column: str = "hist_markdown",
                     profile_column: str | None = "profile_markdown",
                     cutoff: datetime | None = None, stats: CPTStats | None = None
                     ) -> list[str]:
    """One text per member: profile, then history lines (strictly before ``cutoff``)."""
    stats = stats if stats is not None else CPTStats()
    need = [history_column, "hist_time"] + ([profile_column] if profile_column else [])
    for col in need:
        if col not in member_rows.columns:
            raise TrainDataError(f"member rows lack column {col!r} (have "
                                 f"{member_rows.columns}): pass the prepare stage's member_rows, "
                                 f"or fix data.history_column / data.profile_column")
    docs: list[str] = []
    hist = member_rows[history_column].to_list()
    times = member_rows["hist_time"].to_list()
    profiles = (member_rows[profile_column].to_list() if profile_column
                else [None] * member_rows.height)
    for lines, ts, prof in zip(hist, times, profiles, strict=True):
        stats.members_in += 1
        lines = lines or []
        ts = ts or [None] * len(lines)
        kept = [ln for ln, t in zip(lines, ts, strict=True)
                if cutoff is None or t is None or t < cutoff]
        stats.events_after_cutoff += len(lines) - len(kept)
        stats.events_kept += len(kept)
        if not kept and not prof:
            continue
        parts = [p for p in (prof, "\n".join(kept)) if p]
        docs.append("\n\n".join(parts))
    stats.documents = len(docs)
    return docs


def pack_documents(doc_ids: Sequence[Sequence[int]], eos_id: int, pad_id: int, seq_len: int,
                   document_mask: bool = True, stats: CPTStats | None = None) -> PackedDataset:
    """Concatenate documents (EOS after each) and cut into ``seq_len`` blocks.

    With ``document_mask`` each document piece in a block gets its own segment (1, 2, ...)
    and positions from 0; without it the block is one causal sequence (segment 0).
    """
    stats = stats if stats is not None else CPTStats()
    stream: list[int] = []
    doc_of: list[int] = []
    for d, ids in enumerate(doc_ids):
        stream.extend(ids)
        stream.append(eos_id)
        doc_of.extend([d] * (len(ids) + 1))
    stats.tokens = len(stream)
    blocks: list[TokenizedPrompt] = []
    for start in range(0, len(stream), seq_len):
        ids = np.asarray(stream[start:start + seq_len], dtype=np.int64)
        docs = np.asarray(doc_of[start:start + seq_len], dtype=np.int64)
        n = len(ids)
        labels = ids.copy()
        if document_mask:
            # segment j+1 for the j-th document piece in this block; positions restart
            change = np.concatenate([[True], docs[1:] != docs[:-1]])
            seg = np.cumsum(change).astype(np.int64)
            starts = np.flatnonzero(change)
            pos = np.arange(n, dtype=np.int64) - np.repeat(starts, np.diff(np.append(starts, n)))
        else:
            seg = np.zeros(n, dtype=np.int64)
            pos = np.arange(n, dtype=np.int64)
        if n < seq_len:
            pad = seq_len - n
            stats.padding_tokens += pad
            ids = np.concatenate([ids, np.full(pad, pad_id, dtype=np.int64)])
            labels = np.concatenate([labels, np.full(pad, IGNORE_INDEX, dtype=np.int64)])
            seg = np.concatenate([seg, np.full(pad, PAD_SEGMENT, dtype=np.int64)])
            pos = np.concatenate([pos, np.zeros(pad, dtype=np.int64)])
        empty = np.zeros(0, dtype=np.int64)
        blocks.append(TokenizedPrompt(ids, labels, seg, pos, empty, empty, len(blocks)))
    stats.blocks = len(blocks)
    return PackedDataset(blocks, stats)


def build_cpt_dataset(member_rows: pl.DataFrame, tokenizer, seq_len: int,
                      cutoff: datetime | None, history_column: str = "hist_markdown",
                      profile_column: str | None = "profile_markdown",
                      document_mask: bool = True) -> PackedDataset:
    """Member rows -> documents -> packed blocks (see the module docstring)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise TrainDataError("the tokenizer has no eos_token: CPT separates documents with it; "
                             "set tokenizer.eos_token")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    stats = CPTStats()
    docs = member_documents(member_rows, history_column, profile_column, cutoff, stats)
    ids = [bos_ids(tokenizer) + d for d in encode_many(tokenizer, docs)]
    return pack_documents(ids, eos, pad, seq_len, document_mask, stats)


def read_member_rows(member_rows_dir: Path) -> pl.DataFrame:
    """The prepare stage's member rows, sorted by member id (deterministic order)."""
    files = sorted(glob.glob(str(Path(member_rows_dir) / "*.parquet")))
    if not files:
        raise TrainDataError(f"data.member_rows_dir={member_rows_dir}: no *.parquet files; "
                             f"point it at the prepare stage's member_rows/ directory")
    return pl.read_parquet(files).sort("member_id")


# ------------------------------------------------------------------------ batching


@dataclass
class Batch:
    """A right-padded batch of prompts or blocks, ready for ``RankingLM``.

    ``segment_ids`` is kept so the model can build the attention mask in its own dtype;
    ``dense_mask`` says whether a segment mask is needed (False: plain causal + padding).
    ``cue_rows/cue_cols`` index the answer cues; ``cue_group`` is the prompt each cue
    belongs to (pairs for the ranking loss are formed within a group).
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    segment_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor  # [B, T] 1 = real token
    dense_mask: bool
    cue_rows: torch.Tensor
    cue_cols: torch.Tensor
    cue_labels: torch.Tensor
    cue_group: torch.Tensor
    rows: list[int]
    n_tokens: int

    def to(self, device: torch.device | str) -> Batch:
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                 for k, v in self.__dict__.items()}
        return Batch(**moved)


def collate(items: Sequence[TokenizedPrompt], pad_id: int) -> Batch:
    """Right-pad with ``pad_id`` (labels with -100, segments with -1)."""
    if not items:
        raise TrainDataError("collate got an empty batch")
    t = max(len(x) for x in items)
    b = len(items)
    ids = torch.full((b, t), pad_id, dtype=torch.long)
    labels = torch.full((b, t), IGNORE_INDEX, dtype=torch.long)
    seg = torch.full((b, t), PAD_SEGMENT, dtype=torch.long)
    pos = torch.zeros((b, t), dtype=torch.long)
    att = torch.zeros((b, t), dtype=torch.long)
    rows, cols, lab, grp = [], [], [], []
    n_tokens = 0
    dense = False
    for r, x in enumerate(items):
        n = len(x)
        ids[r, :n] = torch.from_numpy(x.input_ids)
        labels[r, :n] = torch.from_numpy(x.labels)
        seg[r, :n] = torch.from_numpy(x.segment_ids)
        pos[r, :n] = torch.from_numpy(x.position_ids)
        real = x.segment_ids != PAD_SEGMENT
        att[r, :n] = torch.from_numpy(real.astype(np.int64))
        n_tokens += int(real.sum())
        dense = dense or bool((x.segment_ids > 0).any())
        rows += [r] * len(x.cue_positions)
        cols += x.cue_positions.tolist()
        lab += x.answer_labels.tolist()
        grp += [r] * len(x.cue_positions)
    return Batch(ids, labels, seg, pos, att, dense,
                 torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long),
                 torch.tensor(lab, dtype=torch.long), torch.tensor(grp, dtype=torch.long),
                 [x.row for x in items], n_tokens)


def segment_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """Boolean ``[B, 1, T, T]`` (True = attend): ``k <= q and (seg[k] == 0 or seg[k] ==
    seg[q])``, the scoring engine's rule (``components.model.multi_item.dense_mask``)."""
    t = segment_ids.shape[1]
    idx = torch.arange(t, device=segment_ids.device)
    causal = idx[None, :] <= idx[:, None]
    seg_q = segment_ids[:, :, None]
    seg_k = segment_ids[:, None, :]
    same = (seg_k == PREFIX_SEGMENT) | (seg_k == seg_q)
    return (causal[None] & same)[:, None]


class BatchPlan:
    """Which items form micro-batch ``k`` on this rank: a pure function of (seed, k).

    Why not a DataLoader: resuming at step s must see exactly the batches an
    uninterrupted run sees after s, and every rank must run the same number of
    micro-batches (FSDP all-gathers are collectives). Each epoch is a seeded permutation,
    padded by wrap-around to a multiple of ``world * batch_size`` and dealt round-robin.

    ``group_batches`` > 0 (with ``lengths``) groups by length, as Hugging Face's
    ``group_by_length`` does: the permutation is cut into windows of ``group_batches``
    rounds (a round = one micro-batch on every rank), each window sorted by length, and
    the rounds then shuffled. Why: a micro-batch is padded to its longest prompt and every
    rank waits for the slowest at each collective, so random mixing of 200- and
    1,000-token prompts wastes a large share of CPU time on padding and waiting.
    """

    def __init__(self, n_items: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True,
                 lengths: Sequence[int] | None = None, group_batches: int = 0) -> None:
        if lengths is not None and len(lengths) != n_items:
            raise TrainDataError(f"BatchPlan: {len(lengths)} lengths for {n_items} items")
        if group_batches and lengths is None:
            raise TrainDataError("BatchPlan: group_batches needs the items' lengths")
        self.lengths = None if lengths is None else np.asarray(lengths, dtype=np.int64)
        self.group = int(group_batches)
        if n_items < 1:
            raise TrainDataError("the training set is empty: check data.examples_dir / the "
                                 "split and the TokenizeStats (prompts dropped as too long?)")
        self.n, self.bs, self.seed = n_items, batch_size, seed
        self.rank, self.world, self.shuffle = rank, world_size, shuffle
        per_round = world_size * batch_size
        self.batches_per_epoch = max(1, -(-n_items // per_round))
        self._epoch: int | None = None
        self._order: np.ndarray | None = None

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._epoch != epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
                order = torch.randperm(self.n, generator=g).numpy()
            else:
                order = np.arange(self.n)
            total = self.batches_per_epoch * self.world * self.bs
            order = np.resize(order, total)  # wrap-around padding
            if self.group and self.lengths is not None:
                order = self._group_by_length(order, epoch)
            self._order = order[self.rank::self.world]
            self._epoch = epoch
        assert self._order is not None
        return self._order

    def _group_by_length(self, order: np.ndarray, epoch: int) -> np.ndarray:
        """Sort windows of ``group`` rounds by length, then shuffle whole rounds. A round
        is ``world * bs`` consecutive items; dealing it round-robin gives every rank
        ``bs`` items of similar length."""
        assert self.lengths is not None
        per_round = self.world * self.bs
        window = self.group * per_round
        parts = []
        for s in range(0, len(order), window):
            w = order[s:s + window]
            parts.append(w[np.argsort(-self.lengths[w], kind="stable")])
        rounds = np.concatenate(parts).reshape(-1, per_round)
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch + 7_919)
        return rounds[torch.randperm(len(rounds), generator=g).numpy()].reshape(-1)

    def indices(self, micro_step: int) -> list[int]:
        epoch, j = divmod(micro_step, self.batches_per_epoch)
        order = self._epoch_order(epoch)
        return order[j * self.bs:(j + 1) * self.bs].tolist()


def eval_shards(n_items: int, batch_size: int, rank: int, world_size: int
                ) -> Iterator[tuple[list[int], list[bool]]]:
    """Evaluation batches for this rank: every item once over all ranks, the same number
    of batches on every rank (the short ones repeat item 0 with ``keep=False``)."""
    mine = list(range(rank, n_items, world_size))
    per_rank = -(-n_items // world_size)
    n_batches = -(-per_rank // batch_size)
    keep = [True] * len(mine) + [False] * (n_batches * batch_size - len(mine))
    mine = mine + [0] * (len(keep) - len(mine))
    for b in range(n_batches):
        s = slice(b * batch_size, (b + 1) * batch_size)
        yield mine[s], keep[s]
