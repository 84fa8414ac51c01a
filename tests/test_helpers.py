"""The small shared helpers: the one token estimate and the one atomic write."""

from __future__ import annotations

from ganglion.tokens import MESSAGE_OVERHEAD, estimate_tokens, message_tokens


def test_the_token_estimate_rounds_up_and_a_message_costs_its_overhead() -> None:
    assert [estimate_tokens(t) for t in ("", "a", "abcd", "abcde")] == [0, 1, 1, 2]
    assert estimate_tokens("x" * 40) == 10
    assert message_tokens("") == MESSAGE_OVERHEAD
    assert message_tokens("abcde") == 2 + MESSAGE_OVERHEAD
