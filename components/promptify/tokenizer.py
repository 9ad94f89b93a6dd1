"""Tokenizer for the embedded default: a byte-level BPE trained on the promptified text.

Why train one: model weights cannot be downloaded here, so the tiny models are trained
from scratch, and a vocabulary fitted to our own prompts keeps sequences short. Any
local Hugging Face tokenizer directory can be used instead (``load_tokenizer``).

The answer tokens (" Yes" / " No") must each be exactly one token: a score is read
from the two label rows of the LM head at one position, so a label split into pieces
cannot be scored. Training adds them to the vocabulary; loading checks them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

ANSWER_YES = " Yes"
ANSWER_NO = " No"
SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>")


class TokenizerError(ValueError):
    """A tokenizer that cannot be used for scoring; the message says why and the fix."""


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int, out_dir: Path, min_frequency: int = 2
) -> Path:
    """Train a byte-level BPE on ``texts``; save it as a Hugging Face tokenizer directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def stream() -> Iterator[str]:
        # The answers are in every training prompt, but make sure they become tokens even
        # on a tiny corpus: repeat them so BPE merges them whole.
        yield from ((ANSWER_YES + ANSWER_NO) * 8 for _ in range(64))
        yield from texts

    tok.train_from_iterator(stream(), trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=SPECIAL_TOKENS[0], pad_token=SPECIAL_TOKENS[1]
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out_dir)
    answer_token_ids(hf)  # fail now, not at scoring time
    return out_dir


def prompt_texts(prepared, tokenizer_dir: Path, tasks, cfg, members: int, seed: int = 0) -> list[str]:
    """The prefixes and candidate texts of the training prompts of up to ``members``
    members, built by the promptify code itself with the tokenizer at ``tokenizer_dir``.

    Why: the corpus the first BPE sees (profiles, history lines, item texts, task
    wording) lacks the prompt's own scaffolding: section headings at the start of a line,
    ``Answer:`` after a newline, the ``Today:`` / ``Posted:`` lines, item statistics and
    match hints, which are rendered only when prompts are built. Measured on MovieLens
    (docs/benchmarks.md): a BPE trained on built prompts encodes the test prompts in 15%
    fewer tokens and keeps ``Ratings``, ``mean`` and ``Answer`` whole where the corpus
    BPE splits them (``An sw er``). Training split only: the tokenizer is fitted on what
    training sees. ``prepared`` is a :class:`~components.promptify.examples.PreparedData`.
    """
    import polars as pl
    import pyarrow.parquet as pq

    from components.promptify.examples import PromptBuilder

    files = sorted(Path(prepared.members_dir).glob("*.parquet"))
    if not files or members <= 0:
        return []
    table = pq.read_table(files)
    if table.num_rows > members:
        pick = pl.Series(range(table.num_rows)).sample(members, seed=seed).sort().to_list()
        table = table.take(pick)
    built = pl.from_arrow(PromptBuilder(str(tokenizer_dir), prepared, tasks, cfg)(table))
    train = built.filter(pl.col("split") == "train")
    return train["prefix"].to_list() + train["candidates"].explode().drop_nulls().to_list()


def load_tokenizer(path: Path):
    """Any local Hugging Face tokenizer directory; answer tokens are checked."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.exists():
        raise TokenizerError(f"tokenizer path {path} does not exist: give a local HF tokenizer directory")
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    answer_token_ids(tok)
    return tok


def answer_token_ids(tok, yes: str = ANSWER_YES, no: str = ANSWER_NO) -> tuple[int, int]:
    """Ids of the yes/no answer tokens; an error if either is not a single token."""
    ids = []
    for text in (yes, no):
        pieces = tok.encode(text, add_special_tokens=False)
        if len(pieces) != 1:
            raise TokenizerError(
                f"answer {text!r} is {len(pieces)} tokens {pieces} in this tokenizer, must be 1: "
                f"choose answers that are single tokens (check with tok.encode) or train the "
                f"tokenizer with them (components.promptify.tokenizer.train_bpe_tokenizer)"
            )
        ids.append(pieces[0])
    if ids[0] == ids[1]:
        raise TokenizerError(f"answers {yes!r} and {no!r} map to the same token id {ids[0]}")
    return ids[0], ids[1]
