"""The ``sasrec`` baseline: a tiny causal transformer over the member's engaged item sequence,
pretrained with next-item BCE, then fine-tuned per task (task FiLM)."""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from components.evaluate.baselines.data import BaselineConfig, BaselineData
from components.promptify.tasks import TaskSpec


def _sasrec_module(n_codes: int, n_actions: int, n_tasks: int, cfg: BaselineConfig):
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Block(nn.Module):
        def __init__(self, dim: int, heads: int, dropout: float):
            super().__init__()
            self.heads = heads
            self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
            self.drop = nn.Dropout(dropout)

        def forward(self, x, mask):
            b, n, d = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, n, d)))
            return x + self.drop(self.mlp(self.ln2(x)))

    class SASRec(nn.Module):
        """Left-padded event sequences (item code, attribute tokens, action; code 0 =
        padding) -> one vector per position (causal). ``task_logits`` turns the last vector
        into a task's query by a per-task scale and shift (FiLM) and adds a task bias: at
        their init (1, 0, 0) it is the task-agnostic next-item score."""

        def __init__(self):
            super().__init__()
            d = cfg.sasrec_dim
            self.item = nn.Embedding(n_codes, d, padding_idx=0)
            self.attr = nn.Embedding(cfg.sasrec_attribute_buckets + 1, d, padding_idx=0)
            self.action = nn.Embedding(n_actions + 1, d, padding_idx=0)
            self.pos = nn.Embedding(cfg.sasrec_max_len, d)
            self.blocks = nn.ModuleList(Block(d, cfg.sasrec_heads, cfg.sasrec_dropout)
                                        for _ in range(cfg.sasrec_layers))
            self.ln = nn.LayerNorm(d)
            self.drop = nn.Dropout(cfg.sasrec_dropout)
            self.task_scale = nn.Embedding(n_tasks + 1, d)  # task 0: a task not fitted
            self.task_shift = nn.Embedding(n_tasks + 1, d)
            self.task_bias = nn.Embedding(n_tasks + 1, 1)
            nn.init.ones_(self.task_scale.weight)
            nn.init.zeros_(self.task_shift.weight)
            nn.init.zeros_(self.task_bias.weight)

        def embed(self, codes, attrs):
            """Item vectors: id embedding + mean of the item's attribute embeddings."""
            e = self.item(codes)
            if attrs.shape[-1]:
                e = e + self.attr(attrs).sum(-2) / (attrs != 0).sum(-1, keepdim=True).clamp(min=1)
            return e

        def forward(self, codes, attrs, actions):
            n = codes.shape[1]
            # positions count back from the latest event, so left padding can be trimmed
            back = torch.arange(n - 1, -1, -1, device=codes.device)
            x = self.drop(self.embed(codes, attrs) * math.sqrt(self.item.embedding_dim)
                          + self.action(actions) + self.pos(back))
            causal = torch.ones(n, n, dtype=torch.bool, device=codes.device).tril()
            # a position sees earlier real events and itself (so padded rows stay finite)
            mask = (causal & (codes != 0)[:, None, :]) | torch.eye(n, dtype=torch.bool, device=codes.device)
            for blk in self.blocks:
                x = blk(x, mask[:, None])
            return self.ln(x)

        def task_logits(self, h, task, e):
            z = h * self.task_scale(task) + self.task_shift(task)
            return (z * e).sum(-1) + self.task_bias(task)[..., 0]

    return SASRec()


def _attribute_tokens(items: pl.DataFrame, columns: Sequence[str], buckets: int,
                      max_tokens: int = 16) -> tuple[dict[str, int], np.ndarray]:
    """(item_id -> row, tokens[row]): each item's values of ``columns`` (every element of a
    list column) hashed to 1..buckets, 0-padded, at most ``max_tokens`` per item. Row 0
    has none (an item missing from the table). Hashing needs no fitted vocabulary: an
    item first seen at scoring time gets the embeddings of its attributes."""
    cols = [c for c in columns if c in items.columns]
    ids = items["item_id"].to_list()
    tokens: list[list[int]] = [[] for _ in ids]
    for c in cols:
        for k, v in enumerate(items[c].to_list()):
            for x in (v if isinstance(v, list) else [v]):
                if x is not None:
                    tokens[k].append(zlib.crc32(f"{c}={x}".encode()) % buckets + 1)
    width = min(max_tokens, max((len(t) for t in tokens), default=0))
    out = np.zeros((len(ids) + 1, width), dtype=np.int64)
    for k, t in enumerate(tokens):
        t = t[:width]
        out[k + 1, :len(t)] = t
    return {i: k + 1 for k, i in enumerate(ids)}, out


def _item_inputs(item_ids: pl.Series, codes: dict[str, int], rows: dict[str, int],
                 tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(id codes, attribute tokens) of ``item_ids``: code 1 for an item without its own id."""
    c = item_ids.replace_strict(codes, default=1, return_dtype=pl.Int64).to_numpy()
    r = item_ids.replace_strict(rows, default=0, return_dtype=pl.Int64).to_numpy()
    return np.array(c), tokens[r]  # a copy: torch wants writable arrays


def _histories(events: pl.DataFrame, keys: pl.DataFrame, max_len: int) -> np.ndarray:
    """For each (member_id, cutoff) of ``keys``: row numbers (1-based; 0 = padding) of the
    member's last ``max_len`` ``events`` strictly before the cutoff, left-padded.
    ``events`` are sorted by member and time."""
    ts = events["timestamp"].dt.epoch("us").to_numpy()
    spans = {m: (lo, hi) for m, lo, hi in events.with_row_index("__r").group_by("member_id").agg(
        pl.col("__r").min().alias("lo"), (pl.col("__r").max() + 1).alias("hi")).iter_rows()}
    out = np.zeros((keys.height, max_len), dtype=np.int64)
    for r, (m, cutoff_us) in enumerate(keys.select("member_id", pl.col("cutoff").dt.epoch("us")).iter_rows()):
        if m in spans:
            lo, hi = spans[m]
            end = lo + int(np.searchsorted(ts[lo:hi], cutoff_us, side="left"))  # strictly before
            start = max(lo, end - max_len)
            if end > start:
                out[r, max_len - (end - start):] = np.arange(start, end) + 1
    return out


@dataclass
class _EventTable:
    """Engaged events as model inputs, row 0 = padding: id code, attribute tokens, action."""

    codes: np.ndarray
    attrs: np.ndarray
    actions: np.ndarray

    @classmethod
    def build(cls, events: pl.DataFrame, codes: dict[str, int], rows: dict[str, int],
              tokens: np.ndarray, actions: dict[str, int]) -> _EventTable:
        c, a = _item_inputs(events["item_id"], codes, rows, tokens)
        act = events["action"].replace_strict(actions, default=0, return_dtype=pl.Int64).to_numpy()
        return cls(np.concatenate([[0], c]), np.concatenate([np.zeros((1, a.shape[1]), np.int64), a]),
                   np.concatenate([[0], act]))

    def tensors(self, hist: np.ndarray):
        """(codes, attrs, actions) of left-padded event rows ``hist``, the columns that are
        padding in every row dropped (most histories are far shorter than max_len)."""
        import torch

        real = (hist != 0).any(0)
        hist = hist[:, min(int(real.argmax()) if real.any() else hist.shape[1] - 1, hist.shape[1] - 1):]
        return (torch.from_numpy(self.codes[hist]), torch.from_numpy(self.attrs[hist]),
                torch.from_numpy(self.actions[hist]))


def _engaged_events(data: BaselineData, not_engaged: Sequence[str]) -> pl.DataFrame:
    return (data.interactions.filter(~pl.col("action").is_in(list(not_engaged)))
            .select("member_id", "item_id", "action", "timestamp", "split")
            .sort("member_id", "timestamp", "item_id"))


@dataclass
class SASRecBaseline:
    """Item codes: 0 padding, 1 unknown (unseen or rare in training), 2.. known items; an
    item's vector adds its hashed attribute embeddings, so unknown items differ by those."""

    module: object
    codes: dict[str, int]
    actions: dict[str, int]
    task_index: dict[str, int]
    task_aware: bool
    attributes: list[str]
    attribute_buckets: int
    max_len: int
    not_engaged_actions: list[str]
    name: str = "sasrec"
    needs_features: bool = False
    tasks: list[TaskSpec] = field(default_factory=list)
    cfg: BaselineConfig | None = None

    def score_rows(self, data: BaselineData, rows: pl.DataFrame) -> np.ndarray:
        import torch

        if rows.height == 0:
            return np.zeros(0)
        item_rows, tokens = _attribute_tokens(data.items, self.attributes, self.attribute_buckets)
        ev = _engaged_events(data, self.not_engaged_actions)
        table = _EventTable.build(ev, self.codes, item_rows, tokens, self.actions)
        keys = rows.select("member_id", "cutoff").unique().sort("member_id", "cutoff")
        hist = _histories(ev, keys, self.max_len)
        key_index = rows.join(keys.with_row_index("__k"), on=["member_id", "cutoff"], how="left")["__k"]
        codes, attrs = _item_inputs(rows["item_id"], self.codes, item_rows, tokens)
        task = np.array(rows["task_id"].replace_strict(self.task_index, default=0, return_dtype=pl.Int64).to_numpy())
        module = self.module
        module.eval()
        with torch.no_grad():
            reps = torch.cat([module(*table.tensors(hist[i:i + 512]))[:, -1] for i in range(0, keys.height, 512)])
            h = reps[torch.from_numpy(key_index.to_numpy().astype(np.int64))]
            e = module.embed(torch.from_numpy(codes), torch.from_numpy(attrs))
            scores = (module.task_logits(h, torch.from_numpy(task), e) if self.task_aware
                      else (h * e).sum(-1))
        return scores.double().numpy()


def fit_sasrec(data: BaselineData, cfg: BaselineConfig, lists: pl.DataFrame | None = None,
               task_ids: Sequence[str] = ()) -> SASRecBaseline:
    """Next-item pretraining (``sasrec_epochs``), then, when ``lists`` are given (training
    lists of :func:`training_lists`: ``member_id, task_id, cutoff, item_id, label``) and
    ``cfg.sasrec_task_aware``, per-task BCE on them (``sasrec_task_epochs``).

    Pretraining sequences are each member's engaged events (actions not in
    ``not_engaged_actions``) of the train split, cut into chunks of ``sasrec_max_len + 1``,
    one uniformly drawn item of the items table as the negative per position. A list
    row's sequence is the member's engaged events strictly before its cutoff (as at
    scoring time). Item ids with at least ``sasrec_min_item_count`` train-split events
    (any action) get their own embedding."""
    import torch

    task_aware = cfg.sasrec_task_aware and lists is not None and cfg.sasrec_task_epochs > 0
    train = data.interactions.filter(pl.col("split") == "train")
    counts = train.group_by("item_id").len("n").filter(pl.col("n") >= cfg.sasrec_min_item_count)
    codes = {i: k + 2 for k, i in enumerate(sorted(counts["item_id"].to_list()))}
    item_rows, tokens = _attribute_tokens(data.items, cfg.sasrec_attributes, cfg.sasrec_attribute_buckets)
    ev = _engaged_events(data, cfg.not_engaged_actions)
    actions = {a: k + 1 for k, a in enumerate(sorted(ev.filter(pl.col("split") == "train")["action"].unique()))}
    table = _EventTable.build(ev, codes, item_rows, tokens, actions)
    L = cfg.sasrec_max_len
    chunks = []
    for (_,), g in ev.with_row_index("__r", offset=1).filter(pl.col("split") == "train").group_by(
            "member_id", maintain_order=True):
        r = g["__r"].to_numpy()
        for end in range(r.size, 1, -L):  # targets of consecutive chunks do not overlap
            s = r[max(0, end - L - 1):end]
            row = np.zeros(L + 1, dtype=np.int64)
            row[-s.size:] = s
            chunks.append(row)
    if not chunks and not task_aware:
        raise ValueError("no training sequence of two or more engaged events: SASRec cannot be fitted "
                         "(check BaselineConfig.not_engaged_actions and the train split)")
    task_index = {t: k + 1 for k, t in enumerate(task_ids)}
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        torch.manual_seed(cfg.seed)
        module = _sasrec_module(len(codes) + 2, len(actions), len(task_index), cfg)
        gen = torch.Generator().manual_seed(cfg.seed)
        opt = torch.optim.Adam(module.parameters(), lr=cfg.sasrec_lr)
        if chunks and cfg.sasrec_epochs:
            catalogue = _item_inputs(data.items["item_id"], codes, item_rows, tokens)
            _pretrain_sasrec(module, opt, gen, table, np.stack(chunks), catalogue, cfg)
        if task_aware:
            opt = torch.optim.Adam(module.parameters(), lr=cfg.sasrec_lr)
            _finetune_sasrec(module, opt, gen, table, ev, lists, codes, item_rows, tokens, task_index, cfg)
    finally:
        torch.set_num_threads(threads)
    module.eval()
    return SASRecBaseline(module, codes, actions, task_index, task_aware, list(cfg.sasrec_attributes),
                          cfg.sasrec_attribute_buckets, L, list(cfg.not_engaged_actions))


def _drop_ids(codes, p: float, gen):
    """Training: known ids (>= 2) replaced by the unknown id 1 with probability ``p``."""
    import torch

    if p <= 0:
        return codes
    return torch.where((codes >= 2) & (torch.rand(codes.shape, generator=gen) < p), torch.ones_like(codes), codes)


def _pretrain_sasrec(module, opt, gen, table: _EventTable, chunks: np.ndarray,
                     catalogue: tuple[np.ndarray, np.ndarray], cfg: BaselineConfig) -> None:
    import torch
    from torch.nn import functional as F

    sequences = torch.from_numpy(chunks)
    cat_codes, cat_attrs = torch.from_numpy(catalogue[0]), torch.from_numpy(catalogue[1])
    module.train()
    for _ in range(cfg.sasrec_epochs):
        for idx in torch.randperm(len(sequences), generator=gen).split(cfg.sasrec_batch_size):
            codes, attrs, acts = table.tensors(sequences[idx].numpy())
            codes = _drop_ids(codes, cfg.sasrec_id_dropout, gen)
            h = module(codes[:, :-1], attrs[:, :-1], acts[:, :-1])
            neg = torch.randint(0, len(cat_codes), codes[:, 1:].shape, generator=gen)
            pos_logit = (h * module.embed(codes[:, 1:], attrs[:, 1:])).sum(-1)
            neg_logit = (h * module.embed(cat_codes[neg], cat_attrs[neg])).sum(-1)
            real = ((codes[:, :-1] != 0) & (codes[:, 1:] != 0)).float()
            bce = (F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit), reduction="none")
                   + F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit), reduction="none"))
            loss = (bce * real).sum() / real.sum().clamp(min=1)
            opt.zero_grad()
            loss.backward()
            opt.step()


def _finetune_sasrec(module, opt, gen, table: _EventTable, events: pl.DataFrame, lists: pl.DataFrame,
                     codes: dict[str, int], item_rows: dict[str, int], tokens: np.ndarray,
                     task_index: dict[str, int], cfg: BaselineConfig) -> None:
    """Per-task BCE on the training lists: the task's FiLM of the member's sequence vector
    before the list's cutoff, dotted with the candidate's vector, plus the task's bias."""
    import torch
    from torch.nn import functional as F

    keys = lists.select("member_id", "cutoff").unique().sort("member_id", "cutoff")
    hist = _histories(events, keys, cfg.sasrec_max_len)
    # rows grouped by their (member, cutoff): a step encodes each sequence once
    lists = lists.join(keys.with_row_index("__k"), on=["member_id", "cutoff"], how="left").sort("__k", maintain_order=True)
    q = lists["__k"].to_numpy().astype(np.int64)
    bounds = np.searchsorted(q, np.arange(keys.height + 1))
    c, a = _item_inputs(lists["item_id"], codes, item_rows, tokens)
    cand_codes, cand_attrs = torch.from_numpy(c), torch.from_numpy(a)
    task = torch.from_numpy(np.array(lists["task_id"].replace_strict(task_index, default=0,
                                                                      return_dtype=pl.Int64).to_numpy()))
    y = torch.from_numpy(lists["label"].to_numpy().astype(np.float32))
    module.train()
    for _ in range(cfg.sasrec_task_epochs):
        for uq in torch.randperm(keys.height, generator=gen).split(cfg.sasrec_task_batch_size):
            uq = uq.numpy()
            idx = torch.from_numpy(np.concatenate([np.arange(bounds[k], bounds[k + 1]) for k in uq]))
            inv = torch.from_numpy(np.repeat(np.arange(uq.size), bounds[uq + 1] - bounds[uq]))
            s_codes, s_attrs, s_acts = table.tensors(hist[uq])
            h = module(_drop_ids(s_codes, cfg.sasrec_id_dropout, gen), s_attrs, s_acts)[:, -1]
            e = module.embed(_drop_ids(cand_codes[idx], cfg.sasrec_id_dropout, gen), cand_attrs[idx])
            loss = F.binary_cross_entropy_with_logits(module.task_logits(h[inv], task[idx], e), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
