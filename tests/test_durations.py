"""The one duration formatter: what people read for reminders, waits and time-outs."""

from __future__ import annotations

import pytest

from ganglion.durations import duration_text


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0 s"), (-3, "0 s"), (0.5, "0.5 s"), (1.2, "1 s"), (45, "45 s"), (60, "1 min"),
    (90, "1 min 30 s"), (120, "2 min"), (599, "9 min 59 s"), (599.6, "10 min"),
    (659, "11 min"),  # past 10 minutes, to the minute
    (3_600, "1 h"), (7_500, "2 h 5 min"), (86_399, "1 d"), (86_400 + 4 * 3_600, "1 d 4 h"),
    (3 * 86_400 + 29 * 60, "3 d"), (40 * 86_400, "40 d"),
])
def test_duration_text_says_at_most_two_units_rounded_to_the_nearest_step(
    seconds: float, text: str
) -> None:
    assert duration_text(seconds) == text


@pytest.mark.parametrize(("seconds", "text"), [
    (9, "9 s"), (9.1, "10 s"), (601, "11 min"), (3_601, "1 h 1 min"),
    (86_401, "1 d 1 h"), (0.25, "0.25 s"),
])
def test_a_wait_is_never_said_shorter_than_it_is(seconds: float, text: str) -> None:
    assert duration_text(seconds, round_up=True) == text
