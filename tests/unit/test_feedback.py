"""The feedback loop's intensity search: bisection that never repeats an intensity and converges within
2 + floor(log2(1/w)) rounds for a reviewer who accepts an interval of width w."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from umbra.anonymization.feedback import LESS, MORE, IntensitySearch


def rounds_to_accept(search: IntensitySearch, low: float, high: float) -> int | None:
    """Rounds a simulated reviewer needs, who accepts intensities in [low, high] and keeps the interval to
    itself; None when the search runs out first."""
    intensity = search.first()
    for rounds in range(1, 100):
        if low <= intensity <= high:
            return rounds
        intensity = search.answer(MORE if intensity < low else LESS)
        if intensity is None:
            return None
    raise AssertionError("did not stop")


@given(st.floats(0.0, 0.9), st.floats(0.0, 1.0))
def test_a_reviewer_with_an_interval_of_width_0_1_accepts_within_5_rounds(low, initial):
    rounds = rounds_to_accept(IntensitySearch(initial=initial), low, low + 0.1)
    assert rounds is not None and rounds <= 2 + math.floor(math.log2(1 / 0.1)) == 5


def test_over_a_grid_of_reviewers_the_median_is_at_most_5_and_the_max_at_most_8():
    counts = [rounds_to_accept(IntensitySearch(), i / 100, i / 100 + 0.1) for i in range(91)]
    counts.sort()
    assert counts[len(counts) // 2] <= 5 and counts[-1] <= 8 and None not in counts


@given(st.lists(st.sampled_from([MORE, LESS]), max_size=20), st.floats(0.0, 1.0))
def test_no_intensity_is_shown_twice_and_each_answer_is_respected(answers, initial):
    search = IntensitySearch(initial=initial)
    search.first()
    for answer in answers:
        before = search.current
        nxt = search.answer(answer)
        if nxt is None:
            break
        assert (nxt > before) if answer == MORE else (nxt < before)
    assert len(set(search.shown)) == len(search.shown)
    assert all(0.0 <= s <= 1.0 for s in search.shown)


def test_the_search_stops_when_nothing_new_is_left():
    search = IntensitySearch(initial=1.0)
    search.first()
    assert search.answer(MORE) is None  # nothing above the top of the knob
    search = IntensitySearch(initial=0.5, resolution=0.2)
    search.first()
    assert search.answer(LESS) == 0.25 and search.answer(MORE) == 0.375  # (0.25, 0.5) is 0.25 wide: a middle
    assert search.answer(LESS) is None  # (0.25, 0.375) is narrower than the resolution: nothing new to show


def test_a_restarted_job_finds_its_place_by_replaying_the_answers():
    search = IntensitySearch(initial=0.3)
    search.first()
    search.answer(MORE)
    search.answer(LESS)
    again = IntensitySearch.replay(0.3, [MORE, LESS])
    assert again.shown == search.shown and (again.low, again.high) == (search.low, search.high)


@pytest.mark.parametrize("initial", [-0.1, 1.5, float("nan")])
def test_initial_intensity_out_of_range_is_refused(initial):
    with pytest.raises(ValueError):
        IntensitySearch(initial=initial)
