from trainer.rules import edit_distance, rule_violations


def test_rule_violations_whole_words_case_insensitive() -> None:
    assert rule_violations("Fresh tea, never Cheap.", banned_words=["cheap"]) == [
        "uses banned “cheap”"
    ]
    assert rule_violations("The cheapest tea", banned_words=["cheap"]) == []
    assert rule_violations("x" * 11, max_length=10) == ["11 characters, over the 10 limit"]
    assert rule_violations("Tea time", required_words=["Kettle"]) == ["lacks required “Kettle”"]
    assert rule_violations("Kettle & Kite tea", max_length=100, banned_words=["hurry"],
                           required_words=["kettle"]) == []  # fmt: skip


def test_edit_distance() -> None:
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3
    assert edit_distance("same", "same") == 0
