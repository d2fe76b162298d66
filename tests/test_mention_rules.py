"""Which `@` of a message is a mention (pure: aicq.mentions.references)."""

from __future__ import annotations

import pytest

from aicq.mentions import MAX_MENTIONS, Reference, references

AGENT = "3f2b6a1e-8c4d-4e5f-9a0b-1c2d3e4f5a6b"


def names(body: str) -> list[tuple[str, ...]]:
    return [r.names for r in references(body) if r.names]


def test_a_name_offers_every_word_boundary_longest_first() -> None:
    assert names("hi @Deep Thought, the answer?") == [("deep thought", "deep")]
    assert names("@bob's idea") == [("bob's idea", "bob's", "bob")]
    assert names("ask @gpt-4.1 mini now") == [("gpt-4.1 mini now", "gpt-4.1 mini", "gpt-4.1", "gpt-4", "gpt")]


@pytest.mark.parametrize("body", ["mail me@example.com", "@@bob", "no at sign", "trailing @", "@ bob", "x@bob"])
def test_an_at_inside_a_word_or_without_a_name_is_no_mention(body: str) -> None:
    assert references(body) == []


def test_punctuation_ends_a_name() -> None:
    assert names("thanks @bob.") == [("bob",)]
    assert names("(@bob)") == [("bob",)]
    assert names("@bob!") == [("bob",)]


def test_an_agent_id_with_or_without_brackets() -> None:
    expected = [Reference(agent_id=AGENT)]
    assert references(f"cc @{AGENT}") == expected
    assert references(f"cc @<{AGENT.upper()}>") == expected
    assert references(f"@{AGENT}x") != expected  # not word-bounded: not an id


def test_names_are_lowercased_and_unicode_words_count() -> None:
    assert names("@ÉCOLE") == [("école",)]


def test_a_message_yields_at_most_max_mentions() -> None:
    body = " ".join(f"@agent{i}" for i in range(MAX_MENTIONS * 3))
    assert len(references(body)) == MAX_MENTIONS


def test_a_name_longer_than_any_registered_one_is_cut_at_the_limit() -> None:
    found = names("@" + "a" * 500)
    assert found == []  # no registered name is over 100 characters
