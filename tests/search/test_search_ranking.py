"""Bradley-Terry aggregation of pairwise votes, on its own: plain vote records in, scores and ranks out."""

import math
from dataclasses import dataclass

import pytest

from batch_pipeline.search import fit_log_strengths, rank_candidates, score_candidates


@dataclass
class V:
    a: str
    b: str
    alignment_winner: str
    aesthetics_winner: str


def same(a, b, winner, times=1):
    """Votes where one candidate wins both outcomes."""
    return [V(a, b, winner, winner) for _ in range(times)]


def test_consistent_votes_recover_the_true_order():
    order = ["p", "q", "r", "s", "t"]  # p beats everyone after it, 3 votes out of 3
    votes = [v for i, x in enumerate(order) for y in order[i + 1 :] for v in same(x, y, x, 3)]
    scores = score_candidates(order, votes, alpha=0.7)
    assert rank_candidates(order[::-1], scores) == order


def test_a_cycle_gives_finite_equal_scores():
    outcomes = [("A", "B"), ("B", "C"), ("C", "A")] * 3
    strengths = fit_log_strengths(["A", "B", "C"], outcomes)
    assert all(math.isfinite(s) for s in strengths.values())
    assert max(strengths.values()) - min(strengths.values()) < 1e-9


def test_split_votes_rank_the_majority_winner_first_but_close():
    two_one = fit_log_strengths(["A", "B"], [("A", "B"), ("A", "B"), ("B", "A")])
    three_zero = fit_log_strengths(["A", "B"], [("A", "B")] * 3)
    assert 0 < two_one["A"] < three_zero["A"]
    assert two_one["B"] == pytest.approx(-two_one["A"])


def test_an_undefeated_candidate_stays_finite():
    strengths = fit_log_strengths(["A", "B", "C"], [("A", "B")] * 5 + [("A", "C")] * 5 + [("B", "C")] * 5)
    assert math.isfinite(strengths["A"]) and strengths["A"] > strengths["B"] > strengths["C"]
    assert strengths["A"] < 5


def test_missing_votes_are_tolerated_and_an_unseen_candidate_scores_the_average():
    # C's votes all failed; A and B still have a clear order, C sits at the centre of the prior.
    strengths = fit_log_strengths(["A", "B", "C"], [("A", "B"), ("A", "B")])
    assert strengths["A"] > strengths["C"] > strengths["B"]
    assert all(math.isfinite(s) for s in strengths.values())


def test_disconnected_groups_are_still_ranked_on_one_scale():
    strengths = fit_log_strengths(["A", "B", "C", "D"], [("A", "B")] * 3 + [("C", "D")])
    assert strengths["A"] > strengths["C"] > strengths["D"] > strengths["B"]


def test_scores_are_centred_on_zero():
    strengths = fit_log_strengths(["A", "B", "C"], [("A", "B"), ("B", "C"), ("A", "C")])
    assert sum(strengths.values()) == pytest.approx(0, abs=1e-8)


def test_alpha_decides_when_alignment_and_aesthetics_disagree():
    # A always shows the prompt better, B always looks better.
    votes = [V("A", "B", alignment_winner="A", aesthetics_winner="B")] * 3
    alignment_first = score_candidates(["A", "B"], votes, alpha=0.7)
    looks_first = score_candidates(["A", "B"], votes, alpha=0.3)
    assert rank_candidates(["A", "B"], alignment_first) == ["A", "B"]
    assert rank_candidates(["A", "B"], looks_first) == ["B", "A"]
    assert alignment_first["A"].alignment == -alignment_first["A"].aesthetics


def test_equal_scores_are_broken_by_candidate_id():
    scores = score_candidates(["i0c02", "i0c01", "i0c00"], [], alpha=0.7)
    assert rank_candidates(["i0c02", "i0c00", "i0c01"], scores) == ["i0c00", "i0c01", "i0c02"]


def test_a_vote_naming_a_stranger_is_an_error():
    with pytest.raises(ValueError, match="known items"):
        fit_log_strengths(["A", "B"], [("A", "Z")])


def plain_mm(items, outcomes, prior_games=1.0, sweeps=20_000):
    """Hunter's MM without acceleration, run to exhaustion: the reference the fast fit must agree with."""
    wins = {x: prior_games / 2 + sum(w == x for w, _ in outcomes) for x in items}
    p = {x: 1.0 for x in items}
    for _ in range(sweeps):
        p = {
            x: wins[x] / (prior_games / (p[x] + 1) + sum(1 / (p[w] + p[lo]) for w, lo in outcomes if x in (w, lo)))
            for x in items
        }
    mean = sum(math.log(v) for v in p.values()) / len(p)
    return {x: math.log(v) - mean for x, v in p.items()}


def test_the_accelerated_fit_reaches_the_same_maximum_as_plain_mm():
    import random

    rng = random.Random("bt-reference")
    items = [f"c{i}" for i in range(6)]
    true = {x: i for i, x in enumerate(items)}  # consistent but noisy: stronger items usually win
    outcomes = []
    for a, b in [(a, b) for i, a in enumerate(items) for b in items[i + 1 :]]:
        for _ in range(3):
            a_wins = rng.random() < 1 / (1 + math.exp(true[b] - true[a]))
            outcomes.append((a, b) if a_wins else (b, a))
    fast = fit_log_strengths(items, outcomes)
    reference = plain_mm(items, outcomes, sweeps=3_000)
    assert all(fast[x] == pytest.approx(reference[x], abs=1e-6) for x in items)


def test_the_fit_does_not_depend_on_the_order_of_the_votes():
    outcomes = [("A", "B"), ("B", "C"), ("A", "C"), ("C", "A"), ("B", "A")]
    assert fit_log_strengths(["A", "B", "C"], outcomes) == fit_log_strengths(["C", "B", "A"], outcomes[::-1])
