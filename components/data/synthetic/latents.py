"""Hidden latents re-derivable from the seed alone: member taste, item popularity, drift.

Why not draws from a chunk's generator: the hidden model (:mod:`.preferences`) must
recompute the utility of any (member, item) pair later, from the tables' rows and the
seed, without regenerating the chunk the member was drawn in. So taste and popularity
are counter-based hashes of (seed, index), and the drift of industries and topics comes
from a generator of its own. The salts keep the world's random streams apart; all of
them live here, so that a new one cannot collide unseen.
"""

from __future__ import annotations

import numpy as np

from components.data.synthetic.vocabulary import INDUSTRIES, TOPICS

_SALT_TASTE, _SALT_POP, _SALT_DRIFT, _SALT_CATALOG, _SALT_CHUNK = 101, 202, 303, 404, 505


def _seed_key(seed: int) -> int:
    """Any integer seed (negative too) as the non-negative entropy numpy accepts."""
    return seed % 2**64


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer on a uint64 array (wraps on overflow, as intended)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash_uniform(seed: int, salt: int, index: np.ndarray) -> np.ndarray:
    """Counter-based uniforms in [0, 1): hidden latents re-derivable from (seed, index)
    alone, without regenerating the chunk they were drawn in."""
    base = _mix64(np.array([(seed * 1_000_003 + salt) & (2**64 - 1)], dtype=np.uint64))
    with np.errstate(over="ignore"):
        h = _mix64(np.asarray(index).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + base)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def member_interests(seed: int, member_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The hidden interest industries (first, second) of members by 0-based index."""
    n = len(INDUSTRIES)
    u1 = _hash_uniform(seed, _SALT_TASTE, member_index)
    u2 = _hash_uniform(seed, _SALT_TASTE + 1, member_index)
    return (u1 * n).astype(np.int16), (u2 * n).astype(np.int16)


def item_popularity(seed: int, item_type: np.ndarray, item_index: np.ndarray) -> np.ndarray:
    """Hidden log-popularity z-score (standard normal) of items by type code and index."""
    key = np.asarray(item_index, dtype=np.int64) * 8 + np.asarray(item_type, dtype=np.int64)
    u1 = 1.0 - _hash_uniform(seed, _SALT_POP, key)  # (0, 1]
    u2 = _hash_uniform(seed, _SALT_POP + 1, key)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def _drift_params(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(slope, phase) per industry and per topic: which ones rise or fade over the period."""
    rng = np.random.default_rng([_seed_key(seed), _SALT_DRIFT])
    ind = rng.uniform([-1.0, 0.0], [1.0, 1.0], size=(len(INDUSTRIES), 2))
    top = rng.uniform([-1.0, 0.0], [1.0, 1.0], size=(len(TOPICS), 2))
    return ind, top


def _drift(params: np.ndarray, which: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """Trend in [-1, 1]: 0.7 * linear slope + 0.3 * one seasonal cycle."""
    slope, phase = params[which, 0], params[which, 1]
    return 0.7 * slope * (2.0 * frac - 1.0) + 0.3 * np.sin(2.0 * np.pi * (frac + phase))
