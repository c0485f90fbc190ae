"""umbra.privacy.policy: exact intervals, figures read from a round's and a release's metrics, criteria judged and
the automatic review's decision, and policies refused by field."""

from __future__ import annotations

import math

import pytest
from scipy.stats import beta, binomtest

from umbra.privacy.policy import (ADVANTAGE, EPSILON, REIDENTIFICATION, UTILITY, Criterion, Figure, Figures,
                                  Policy, decide, interval, judge, percent)
from umbra.runtime.errors import InvalidInput


def test_zero_of_sixty_reads_at_most_four_point_nine_percent():
    low, high = interval(0, 60)
    assert low == 0.0 and high == pytest.approx(1 - 0.05 ** (1 / 60))  # one-sided 95%: 0.0487
    assert percent(high) == "4.9%"
    criterion = Criterion(REIDENTIFICATION, "", 0.0, 0.05, 60, (low, high))
    assert criterion.figure_text() == "0% (at most 4.9%)"
    assert criterion.met and criterion.certain  # 4.9% ≤ 5%


@pytest.mark.parametrize(("k", "n"), [(1, 60), (7, 60), (30, 60), (59, 60), (3, 8)])
def test_the_interval_is_clopper_pearson(k, n):
    low, high = interval(k, n)
    expected = binomtest(k, n).proportion_ci(0.95, method="exact")
    assert (low, high) == pytest.approx((expected.low, expected.high))
    assert low <= k / n <= high


def test_all_of_n_is_one_sided_at_the_top():
    low, high = interval(60, 60)
    assert high == 1.0 and low == pytest.approx(beta.ppf(0.05, 60, 1))


def test_percent_never_rounds_a_small_share_to_zero():
    assert percent(0.0004) == "<0.1%" and percent(0.012) == "1.2%" and percent(0.30) == "30%" and percent(0) == "0%"


def test_figures_of_a_round_and_of_a_release():
    risk = {"reid_rank1": 0.25, "gender_classifier_agreement": 0.75, "gender_classifier_chance": 0.5,
            "smile_kept_agreement": 0.5, "smile_kept_original": 1.0, "smile_kept_utility": 0.5}
    figures = Figures.of_round(risk, faces=8, epsilon=3.0)
    assert figures.reidentification == Figure(0.25, 8)
    assert figures.advantage["gender"].value == pytest.approx(0.25)
    assert figures.utility["smile"].value == 0.5 and figures.epsilon == 3.0
    # the advantage's interval is the agreement's, less chance
    low, high = figures.advantage["gender"].bounds()
    assert (low + 0.5, high + 0.5) == pytest.approx(interval(6, 8))
    release = Figures.of_release({"reid_rank1": 0.0, "reid_faces": 60, "adversary_gender_bacc": 0.55,
                                  "adversary_gender_chance": 0.5, "kept_smile_utility_ratio": 0.9,
                                  "kept_smile_bacc_trained_on_originals": 0.8}, 7.5)
    assert release.reidentification.faces == 60 and release.advantage["gender"].value == pytest.approx(0.05)
    low, high = release.utility["smile"].bounds()
    assert low * 0.8 == pytest.approx(interval(0.72 * 60, 60)[0])


POLICY = Policy(max_reidentification=0.05, max_adversary_advantage={"gender": 0.1}, min_kept_utility={"smile": 0.8},
                max_epsilon=10)


def figures(reid=0.0, advantage=0.0, utility=1.0, epsilon=5.0, faces=60) -> Figures:
    return Figures(Figure(reid, faces), {"gender": Figure(advantage, faces, chance=0.5)},
                   {"smile": Figure(utility, faces)}, epsilon)


@pytest.mark.parametrize(("measured", "answer", "missed"), [
    (figures(), "accept", []),
    (figures(reid=0.2), "more", [REIDENTIFICATION]),
    (figures(advantage=0.3), "more", [ADVANTAGE]),
    (figures(epsilon=12), "more", [EPSILON]),
    (figures(utility=0.5), "less", [UTILITY]),
    (figures(reid=0.2, utility=0.5), "more", [REIDENTIFICATION, UTILITY]),  # risks first
])
def test_criteria_and_the_automatic_answer(measured, answer, missed):
    criteria = judge(POLICY, measured)
    assert [c.name for c in criteria] == [REIDENTIFICATION, ADVANTAGE, UTILITY, EPSILON]
    assert [c.name for c in criteria if not c.met] == missed
    assert decide(criteria) == answer
    for c in criteria:
        assert ("met" if c.met else "missed") in c.summary


def test_a_figure_not_measured_is_missed():
    criteria = judge(POLICY, Figures(epsilon=5.0))
    assert [c.met for c in criteria] == [False, False, False, True]
    assert criteria[0].figure_text() == "not measured" and decide(criteria) == "more"


def test_an_estimate_within_the_limit_whose_interval_crosses_it_is_uncertain():
    criterion = judge(Policy(max_reidentification=0.05), Figures(Figure(0.0, 20)))[0]
    assert criterion.met and not criterion.certain  # 0 of 20: at most 13.9%
    assert "crosses the limit" in criterion.summary
    assert judge(Policy(max_epsilon=1.0), Figures(epsilon=math.nan))[0].met is False


def test_to_dict_carries_what_the_rounds_and_the_report_show():
    row = judge(POLICY, figures())[0].to_dict()
    assert row["name"] == REIDENTIFICATION and row["low"] == 0.0 and row["high"] == pytest.approx(0.0487, abs=1e-4)
    assert row["figure"] == "0% (at most 4.9%)" and row["met"] and row["certain"]


@pytest.mark.parametrize(("data", "field"), [
    ({"max_reid": 0.1}, "policy.max_reid"),
    ({"max_reidentification": "low"}, "policy.max_reidentification"),
    ({"max_reidentification": True}, "policy.max_reidentification"),
    ({"max_adversary_advantage": 0.1}, "policy.max_adversary_advantage"),
    ({"min_kept_utility": {"smile": "high"}}, "policy.min_kept_utility.smile"),
    ([0.1], "policy"),
])
def test_bad_policy_files_are_refused_by_field(data, field):
    with pytest.raises(InvalidInput) as error:
        Policy.from_dict(data)
    assert error.value.field == field


@pytest.mark.parametrize(("policy", "field"), [
    (Policy(max_reidentification=1.2), "spec.policy.max_reidentification"),
    (Policy(max_adversary_advantage={"race": 0.1}), "spec.policy.max_adversary_advantage[race]"),
    (Policy(min_kept_utility={"gender": 0.8}), "spec.policy.min_kept_utility[gender]"),
    (Policy(min_kept_utility={"smile": -0.1}), "spec.policy.min_kept_utility[smile]"),
    (Policy(max_epsilon=0), "spec.policy.max_epsilon"),
    (Policy(max_epsilon=math.inf), "spec.policy.max_epsilon"),
])
def test_policies_out_of_range_or_about_other_attributes_are_refused(policy, field):
    with pytest.raises(InvalidInput) as error:
        policy.validate(protected=["gender"], kept=["smile"])
    assert error.value.field == field


def test_a_policy_round_trips_through_a_dict():
    assert Policy.from_dict(POLICY.to_dict()) == POLICY and Policy().empty and not POLICY.empty


def test_epsilon_is_shown_rounded_up_and_what_is_left_down():
    from umbra.privacy.policy import epsilon_text
    assert epsilon_text(3.191) == "3.20" and epsilon_text(3.19) == "3.19" and epsilon_text(20.001) == "20.01"
    assert epsilon_text(3.199, up=False) == "3.19" and epsilon_text(float("inf")) == "unbounded"
    assert Criterion(EPSILON, "", 20.001, 20.0, 0, None).figure_text() == "20.01"


def test_share_text_gives_the_interval_from_the_faces():
    from umbra.privacy.policy import share_text
    assert share_text(0.0, 60) == "0% (at most 4.9%)"
    low, high = interval(1, 3)
    assert share_text(1 / 3, 3) == f"33% ({percent(low)} to {percent(high)})"
    assert share_text(0.5, 0) == "50%"
