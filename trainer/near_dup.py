"""Near-duplicate detection on normalized text: shingles, MinHash signatures and LSH band keys.

Texts are compared on :func:`trainer.cleaning.dedup_key` (NFKC, case-folded, punctuation and
extra whitespace removed), cut into overlapping character shingles. Two texts are near
duplicates when the Jaccard similarity of their shingle sets reaches a threshold (0.85 by
default): a fixed typo or one changed word in a post keeps it above, a different post about
the same product falls well below.

For lookups in a database, :func:`minhash_signature` gives a fixed-size signature and
:func:`lsh_keys` cuts it into band keys (short strings): store one row per key, and the
candidates for a new text are the stored texts sharing at least one key. Confirm a candidate
with :func:`similarity` (exact) or :func:`signature_similarity` (estimate).

Everything is deterministic across processes and machines: hashing uses BLAKE2b and a fixed
seed, never Python's randomised ``hash()``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from trainer.cleaning import dedup_key

__all__ = [
    "DEFAULT_BANDS",
    "DEFAULT_K",
    "DEFAULT_NUM_PERM",
    "DEFAULT_THRESHOLD",
    "is_near_duplicate",
    "jaccard",
    "lsh_keys",
    "minhash_signature",
    "shingles",
    "signature_similarity",
    "similarity",
]

DEFAULT_K = 5
DEFAULT_NUM_PERM = 64
DEFAULT_BANDS = 16
DEFAULT_THRESHOLD = 0.85

_MERSENNE = (1 << 61) - 1  # prime modulus of the universal hash family
_SEED = b"brandbot-minhash-v1"


def shingles(text: str, k: int = DEFAULT_K) -> frozenset[str]:
    """Overlapping ``k``-character shingles of ``dedup_key(text)``.

    A normalized text shorter than ``k`` is its own single shingle; an empty one has none.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    key = dedup_key(text)
    if not key:
        return frozenset()
    if len(key) <= k:
        return frozenset((key,))
    return frozenset([key[i : i + k] for i in range(len(key) - k + 1)])


def jaccard(a: frozenset[str] | set[str], b: frozenset[str] | set[str]) -> float:
    """|a ∩ b| / |a ∪ b|; two empty sets are identical (1.0)."""
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def similarity(a: str, b: str, k: int = DEFAULT_K) -> float:
    """Exact Jaccard similarity of the two texts' shingle sets, in [0, 1]."""
    return jaccard(shingles(a, k), shingles(b, k))


def is_near_duplicate(
    a: str, b: str, threshold: float = DEFAULT_THRESHOLD, k: int = DEFAULT_K
) -> bool:
    """True when ``similarity(a, b) >= threshold``."""
    return similarity(a, b, k) >= threshold


@lru_cache(maxsize=16)
def _permutations(num_perm: int) -> tuple[tuple[int, int], ...]:
    """``num_perm`` fixed (a, b) pairs for h(x) = (a*x + b) mod p, derived from a fixed seed."""
    out: list[tuple[int, int]] = []
    for i in range(num_perm):
        digest = hashlib.blake2b(i.to_bytes(4, "big"), digest_size=16, key=_SEED).digest()
        a = int.from_bytes(digest[:8], "big") % (_MERSENNE - 1) + 1
        b = int.from_bytes(digest[8:], "big") % _MERSENNE
        out.append((a, b))
    return tuple(out)


@lru_cache(maxsize=1 << 15)
def _shingle_hash(shingle: str) -> int:
    """A shingle's 64-bit hash, below the modulus; cached, since texts share most shingles."""
    digest = hashlib.blake2b(shingle.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % _MERSENNE


def minhash_signature(
    text: str, num_perm: int = DEFAULT_NUM_PERM, k: int = DEFAULT_K
) -> tuple[int, ...]:
    """MinHash signature of the text's shingles: ``num_perm`` integers below 2**61.

    The same text gives the same signature in every process. An empty text gives a
    signature of all ``2**61 - 1`` (which matches only other empty texts).
    """
    if num_perm < 1:
        raise ValueError("num_perm must be at least 1")
    return _signature(text, num_perm, k)


@lru_cache(maxsize=4096)
def _signature(text: str, num_perm: int, k: int) -> tuple[int, ...]:
    """The signature, cached: a message is looked up and then stored with the same keys."""
    hashed = np.fromiter(map(_shingle_hash, shingles(text, k)), dtype=np.uint64)
    if not hashed.size:
        return tuple(_MERSENNE for _ in range(num_perm))
    a_high, a_low, b = _permutation_arrays(num_perm)
    return tuple(_affine_min(a_high, a_low, b, hashed).tolist())


@lru_cache(maxsize=16)
def _permutation_arrays(
    num_perm: int,
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """The permutations' a (split into its high 29 and low 32 bits) and b, as columns."""
    perms = _permutations(num_perm)
    a = np.array([a for a, _ in perms], dtype=np.uint64)[:, None]
    b = np.array([b for _, b in perms], dtype=np.uint64)[:, None]
    return a >> np.uint64(32), a & _LOW32, b


_P = np.uint64(_MERSENNE)
_LOW32 = np.uint64(0xFFFFFFFF)
_LOW29 = np.uint64((1 << 29) - 1)


def _affine_min(
    a_high: npt.NDArray[np.uint64],
    a_low: npt.NDArray[np.uint64],
    b: npt.NDArray[np.uint64],
    x: npt.NDArray[np.uint64],
) -> npt.NDArray[np.uint64]:
    """For each permutation (row): min over x of (a*x + b) mod (2**61 - 1), exactly, in 64-bit
    integers (a, b, x < 2**61).

    With a = ah*2**32 + al and x = xh*2**32 + xl: a*x = ah*xh*2**64 + (ah*xl + al*xh)*2**32 +
    al*xl, and 2**64 = 8, 2**61 = 1 modulo p. Each part is brought below about 2**61 without a
    full reduction, so their sum plus b stays below 2**64; one reduction at the end suffices.
    """
    x_high, x_low = x >> np.uint64(32), x & _LOW32
    high = a_high * x_high * np.uint64(8)  # < 2**61
    mid = a_high * x_low + a_low * x_high  # < 2**62; times 2**32 is mid_hi*2**61 + mid_lo*2**32
    mid = (mid >> np.uint64(29)) + ((mid & _LOW29) << np.uint64(32))  # < 2**61 + 2**33
    low = a_low * x_low  # < 2**64
    low = (low & _P) + (low >> np.uint64(61))  # < 2**61 + 8
    v = high + mid + low + b  # < 2**63 + 2**61
    v = (v & _P) + (v >> np.uint64(61))  # < 2**61 + 8
    v = np.where(v >= _P, v - _P, v)
    smallest: npt.NDArray[np.uint64] = v.min(axis=1)
    return smallest


def signature_similarity(a: Sequence[int], b: Sequence[int]) -> float:
    """Estimated Jaccard similarity: the share of signature positions that agree."""
    if len(a) != len(b) or not a:
        raise ValueError("signatures must be non-empty and of equal length")
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


def lsh_keys(signature: Sequence[int], bands: int = DEFAULT_BANDS) -> list[str]:
    """LSH band keys of a signature, e.g. ``"03:9f2c4e01a7b3d5c8"``: one per band.

    The signature is cut into ``bands`` runs of equal length; each key is the band number and
    a 64-bit BLAKE2b digest of that run, so keys from different bands never collide. With the
    defaults (64 values, 16 bands of 4) texts with Jaccard similarity 0.85 share a key with
    probability above 0.99, and texts at 0.3 with probability below 0.13.
    """
    if bands < 1 or len(signature) % bands:
        raise ValueError(f"a signature of {len(signature)} values cannot be cut into {bands} bands")
    rows = len(signature) // bands
    data = np.asarray(signature, dtype=">u8").tobytes()  # each value as 8 big-endian bytes
    step = rows * 8
    keys: list[str] = []
    for band in range(bands):
        digest = hashlib.blake2b(data[band * step : (band + 1) * step], digest_size=8)
        keys.append(f"{band:02d}:{digest.hexdigest()}")
    return keys
