"""Pairwise votes -> scores -> ranking: a regularised Bradley-Terry fit per outcome, blended by alpha.

steps.apply_round feeds it every vote of the session after each vision round and keeps the top M.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from pydantic import BaseModel, ConfigDict

# Each candidate plays this many virtual games against a reference player of strength 1, half won and
# half lost. It is the prior of the fit: one game's worth of pull towards the average.
DEFAULT_PRIOR_GAMES = 1.0
_MAX_STEPS = 2_000
_TOLERANCE = 1e-10  # largest change of any log-strength in one step
_LOG_BOUND = 50.0
# Scores are rounded so that candidates with equal evidence tie exactly and the id tie-break decides,
# instead of the last bits of floating-point summation order.
_DIGITS = 9


class PairVote(Protocol):
    """What the ranking needs from a vote (state.Vote has it): the pair and the winner of each outcome."""

    a: str
    b: str
    alignment_winner: str
    aesthetics_winner: str


class CandidateScore(BaseModel):
    """Centred log-strengths; comparable only within one fit, i.e. one set of votes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    combined: float
    alignment: float
    aesthetics: float


def fit_log_strengths(
    items: Sequence[str],
    outcomes: Iterable[tuple[str, str]],
    prior_games: float = DEFAULT_PRIOR_GAMES,
) -> dict[str, float]:
    """Bradley-Terry log-strengths of `items` from (winner, loser) outcomes, centred on mean zero.

    Each item also plays `prior_games` virtual games against a fixed reference player of strength 1.
    Those games keep every strength finite and anchored: an undefeated candidate, a cycle
    (A > B > C > A), split votes, a candidate without any vote, or a comparison graph split into parts
    all have a unique, finite maximum. Items without outcomes score 0.
    """
    if prior_games <= 0:
        raise ValueError("prior_games must be positive, or undefeated candidates diverge")
    ids = sorted(set(items))
    position = {item: i for i, item in enumerate(ids)}
    wins = [prior_games / 2] * len(ids)
    games: dict[tuple[int, int], float] = defaultdict(float)
    for winner, loser in outcomes:
        if winner not in position or loser not in position or winner == loser:
            raise ValueError(f"outcome ({winner!r}, {loser!r}) does not name two distinct known items")
        wins[position[winner]] += 1
        first, second = sorted((position[winner], position[loser]))
        games[first, second] += 1
    # Sorted so that the result depends on the multiset of votes, not on their order.
    fit = _Fit(wins, sorted(games.items()), prior_games)

    log_strength = [0.0] * len(ids)
    for _ in range(_MAX_STEPS):
        updated = fit.accelerated_step(log_strength)
        change = max((abs(new - old) for new, old in zip(updated, log_strength, strict=True)), default=0.0)
        log_strength = updated
        if change < _TOLERANCE:
            break

    mean = sum(log_strength) / len(ids) if ids else 0.0
    return {item: round(log_strength[i] - mean, _DIGITS) for i, item in enumerate(ids)}


def score_candidates(
    items: Sequence[str],
    votes: Iterable[PairVote],
    alpha: float,
    prior_games: float = DEFAULT_PRIOR_GAMES,
) -> dict[str, CandidateScore]:
    """Fit alignment and aesthetics separately, then combine alpha*alignment + (1-alpha)*aesthetics.

    Both fits are centred log-strengths, so they share a scale and the blend is meaningful. A vote that
    failed is simply absent; the prior absorbs the missing evidence.
    """
    votes = list(votes)
    alignment = fit_log_strengths(items, (_outcome(v, v.alignment_winner) for v in votes), prior_games)
    aesthetics = fit_log_strengths(items, (_outcome(v, v.aesthetics_winner) for v in votes), prior_games)
    return {
        item: CandidateScore(
            combined=round(alpha * alignment[item] + (1 - alpha) * aesthetics[item], _DIGITS),
            alignment=alignment[item],
            aesthetics=aesthetics[item],
        )
        for item in alignment
    }


def rank_candidates(pool: Iterable[str], scores: Mapping[str, CandidateScore]) -> list[str]:
    """Pool ids best first by combined score; equal scores fall back to the id so ranking is deterministic."""
    return sorted(pool, key=lambda item: (-scores[item].combined, item))


def _outcome(vote: PairVote, winner: str) -> tuple[str, str]:
    if winner == vote.a:
        return vote.a, vote.b
    if winner == vote.b:
        return vote.b, vote.a
    raise ValueError(f"winner {winner!r} is neither {vote.a!r} nor {vote.b!r}")


class _Fit:
    """The regularised Bradley-Terry posterior of one outcome, and the steps that climb it."""

    def __init__(self, wins: list[float], games: list[tuple[tuple[int, int], float]], prior_games: float):
        self.wins = wins  # real wins plus half the virtual games
        self.games = games  # ((i, j), number of votes between i and j)
        self.prior_games = prior_games
        self.opponents: list[list[tuple[int, float]]] = [[] for _ in wins]
        for (i, j), count in games:
            self.opponents[i].append((j, count))
            self.opponents[j].append((i, count))

    def mm_step(self, x: list[float]) -> list[float]:
        """Minorize-maximize (Hunter 2004): p_i <- wins_i / sum_j games_ij / (p_i + p_j), the reference included.

        Each step never lowers the posterior, but it creeps when strengths are far apart (a consistent
        judge), hence the acceleration below.
        """
        strength = [math.exp(v) for v in x]
        updated = []
        for i, own in enumerate(strength):
            denominator = self.prior_games / (own + 1.0)
            denominator += sum(count / (own + strength[j]) for j, count in self.opponents[i])
            updated.append(math.log(self.wins[i] / denominator))
        return updated

    def accelerated_step(self, x: list[float]) -> list[float]:
        """SQUAREM (Varadhan & Roland 2008): extrapolate along two MM steps, keep it only if it is better.

        Same fixed point as plain MM, about ten times fewer steps on consistent votes; never worse than
        two plain steps, so the fit still climbs monotonically.
        """
        x1 = self.mm_step(x)
        x2 = self.mm_step(x1)
        r = [b - a for a, b in zip(x, x1, strict=True)]
        v = [c - 2 * b + a for a, b, c in zip(x, x1, x2, strict=True)]
        r_norm, v_norm = math.hypot(*r), math.hypot(*v)
        if v_norm == 0.0:
            return x2
        alpha = min(-r_norm / v_norm, -1.0)  # alpha = -1 reproduces x2
        # Clamped so that a wild extrapolation cannot overflow exp(); real log-strengths stay far inside.
        jump = [a - 2 * alpha * dr + alpha * alpha * dv for a, dr, dv in zip(x, r, v, strict=True)]
        jump = [max(-_LOG_BOUND, min(_LOG_BOUND, value)) for value in jump]
        candidate = self.mm_step(jump)
        return candidate if self.log_posterior(candidate) >= self.log_posterior(x2) else x2

    def log_posterior(self, x: list[float]) -> float:
        # Plain exp/log is safe here: |x| stays within _LOG_BOUND, far from float overflow.
        strength = [math.exp(v) for v in x]
        total = sum(
            w * v - self.prior_games * math.log(p + 1.0) for w, v, p in zip(self.wins, x, strength, strict=True)
        )
        return total - sum(count * math.log(strength[i] + strength[j]) for (i, j), count in self.games)
