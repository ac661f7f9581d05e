from trainer.cleaning import (
    content_hash,
    dedup_key,
    normalize_text,
    split_for,
    text_key,
)


def test_normalize_collapses_space_and_unicode_forms() -> None:
    assert normalize_text("  Hello\u00a0\n world\t ") == "Hello world"
    assert normalize_text("ﬁne") == "fine"


def test_content_hash_ignores_case_space_and_punctuation_but_not_label() -> None:
    a = content_hash("classify", None, "Where is my order?", "shipping")
    assert a == content_hash("classify", None, "where is  my ORDER", "shipping")
    assert a != content_hash("classify", None, "Where is my order?", "billing")
    assert a != content_hash("draft", None, "Where is my order?", "shipping")
    assert dedup_key("Tea, please!") == "tea please"
    assert text_key("Tea, please!") == text_key("tea please")


def test_split_is_deterministic_and_about_fifteen_percent_held_out() -> None:
    keys = [f"example-{i}" for i in range(4000)]
    splits = [split_for(k) for k in keys]
    assert splits == [split_for(k) for k in keys]
    share = splits.count("heldout") / len(splits)
    assert 0.13 < share < 0.17
