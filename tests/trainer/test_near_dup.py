"""Near-duplicate keys: shingles over the dedup form, MinHash, LSH bands, similarity."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.near_dup import (
    is_near_duplicate,
    jaccard,
    lsh_keys,
    minhash_signature,
    shingles,
    signature_similarity,
    similarity,
)

POST = (
    "Spring is here, and so is our first flush Darjeeling. Light, floral and bright, it is "
    "the cup we have waited for all winter. Steep at 85°C for three minutes and enjoy it slowly."
)
SAME_PRODUCT = (
    "Our first flush Darjeeling is back in stock: 100g tins at £12.50, and the 250g pouch is "
    "now on sale. Order before Friday for delivery this week."
)
ROOT = Path(__file__).resolve().parents[2]


def test_shingles_are_taken_over_the_dedup_form() -> None:
    assert shingles("Tea, please!", k=3) == shingles("tea   PLEASE", k=3)
    assert "tea p" in shingles("Tea, please!")
    assert shingles("Tea", k=5) == frozenset({"tea"})
    assert shingles("  ?! ") == frozenset()
    with pytest.raises(ValueError, match="k must be"):
        shingles("tea", k=0)


def test_jaccard_edges() -> None:
    assert jaccard(frozenset(), frozenset()) == 1.0
    assert jaccard(frozenset({"a"}), frozenset()) == 0.0
    assert jaccard(frozenset({"a", "b"}), frozenset({"b", "c"})) == pytest.approx(1 / 3)


def test_case_punctuation_and_spacing_changes_are_exact_duplicates() -> None:
    assert similarity(POST, POST.upper().replace(",", "").replace(" ", "  ")) == 1.0


def test_a_fixed_typo_is_a_near_duplicate() -> None:
    typo = POST.replace("waited", "wiated")
    assert is_near_duplicate(POST, typo)
    assert similarity(POST, typo) > 0.9


def test_a_changed_word_is_a_near_duplicate() -> None:
    edited = POST.replace("bright", "lively")
    assert is_near_duplicate(POST, edited)
    assert is_near_duplicate(edited, POST)


def test_different_posts_about_the_same_product_are_not() -> None:
    assert not is_near_duplicate(POST, SAME_PRODUCT)
    assert similarity(POST, SAME_PRODUCT) < 0.3


def test_threshold_is_respected() -> None:
    edited = POST.replace("bright", "lively")
    score = similarity(POST, edited)
    assert is_near_duplicate(POST, edited, threshold=score)
    assert not is_near_duplicate(POST, edited, threshold=min(1.0, score + 0.01))


def test_signature_shape_and_estimate() -> None:
    sig = minhash_signature(POST)
    assert len(sig) == 64
    assert all(isinstance(v, int) and 0 <= v < 2**61 for v in sig)
    assert len(minhash_signature(POST, num_perm=128)) == 128
    assert signature_similarity(sig, minhash_signature(POST.lower())) == 1.0
    typo = minhash_signature(POST.replace("waited", "wiated"))
    assert signature_similarity(sig, typo) > 0.75
    assert signature_similarity(sig, minhash_signature(SAME_PRODUCT)) < 0.35
    assert minhash_signature("") == minhash_signature("!!")
    with pytest.raises(ValueError, match="equal length"):
        signature_similarity(sig, sig[:10])


def test_lsh_keys_find_near_duplicates_and_separate_different_posts() -> None:
    keys = lsh_keys(minhash_signature(POST))
    assert len(keys) == 16
    assert len(set(keys)) == 16  # the band number is part of each key
    assert all(len(k) == 19 and k[2] == ":" for k in keys)
    near = lsh_keys(minhash_signature(POST.replace("bright", "lively")))
    assert set(keys) & set(near)
    other = lsh_keys(minhash_signature(SAME_PRODUCT))
    assert not set(keys) & set(other)
    assert len(lsh_keys(minhash_signature(POST), bands=8)) == 8
    with pytest.raises(ValueError, match="cannot be cut"):
        lsh_keys(minhash_signature(POST), bands=7)


def test_signatures_and_keys_are_the_same_in_another_process() -> None:
    code = (
        "import json, sys\n"
        "from trainer.near_dup import lsh_keys, minhash_signature\n"
        "sig = minhash_signature(sys.argv[1])\n"
        "print(json.dumps({'sig': list(sig), 'keys': lsh_keys(sig)}))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code, POST],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    other = json.loads(out.stdout)
    sig = minhash_signature(POST)
    assert other["sig"] == list(sig)
    assert other["keys"] == lsh_keys(sig)


def test_keys_are_pinned_so_stored_keys_stay_valid() -> None:
    # Changing the hashing would orphan every band key already stored in a database.
    sig = minhash_signature("Earl Grey, hot.")
    assert sig[:3] == (513282092389648449, 129592483105906604, 135011960894702106)
    assert lsh_keys(sig)[:2] == ["00:45a1efe332b3a267", "01:b3de3a6f6c2335b5"]


def test_signatures_and_keys_match_the_textbook_formula_in_python_integers() -> None:
    # The vectorised arithmetic must give exactly min((a*h(s) + b) mod (2**61 - 1)) per
    # permutation, and keys must be BLAKE2b over each band's big-endian values.
    from trainer.near_dup import _MERSENNE, _permutations, _shingle_hash

    rng = random.Random(11)
    words = POST.split() + SAME_PRODUCT.split() + ["£12.50", "x" * 40, "9" * 30]
    texts = ["", "tea", "Earl Grey, hot."] + [" ".join(rng.choices(words, k=rng.randint(1, 60)))
                                                for _ in range(120)]  # fmt: skip
    for text in texts:
        hashes = [_shingle_hash(s) for s in shingles(text)]
        expected = tuple(
            min(((a * h + b) % _MERSENNE for h in hashes), default=_MERSENNE)
            for a, b in _permutations(64)
        )
        assert minhash_signature(text) == expected, text
        bands = [expected[i : i + 4] for i in range(0, 64, 4)]
        assert lsh_keys(expected) == [
            f"{n:02d}:" + hashlib.blake2b(b"".join(v.to_bytes(8, "big") for v in band),
                                          digest_size=8).hexdigest()
            for n, band in enumerate(bands)
        ]  # fmt: skip
