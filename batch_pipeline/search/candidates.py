"""Who takes part in the current round, derived from the state alone: new candidates, pool, votes.

steps.plan_round builds calls from these; steps.apply_round re-derives them to match results by key.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import combinations

from .prompts import Dimension
from .state import SearchState

# At most this many strengths and as many weaknesses go into one refinement request: enough to point
# at a direction, few enough that the feedback of a long-lived parent does not swamp the prompt.
FEEDBACK_ITEMS = 3


@dataclass(frozen=True)
class NewCandidate:
    """A candidate the text round of the current iteration creates."""

    id: str
    index: int  # 0..N-1 within the iteration
    parent_id: str | None
    variant: int  # the nonce: 1..c among the parent's children (iteration 0: 1..N among all)


@dataclass(frozen=True)
class PlannedVote:
    """One vote of the vision round: pair (a < b), its number, and which image the judge sees first."""

    a: str
    b: str
    vote_index: int  # 1..E
    first_shown: str

    @property
    def second_shown(self) -> str:
        return self.b if self.first_shown == self.a else self.a


def candidate_id(iteration: int, index: int) -> str:
    # Zero-padded so that sorting ids sorts by iteration, then index (N <= 16, K <= 10).
    return f"i{iteration}c{index:02d}"


def refined_dimension(iteration: int) -> Dimension:
    """Odd iterations refine WHAT, even ones HOW (from iteration 1 on; iteration 0 expands both)."""
    return "what" if iteration % 2 == 1 else "how"


def seeded_random(seed: int, purpose: str, *parts: object) -> random.Random:
    """A generator for one decision, from the seed and what is being decided: no global or time-based state.

    String seeds are hashed with SHA-512 by `random`, so the value is the same in every process.
    """
    return random.Random(":".join([str(seed), purpose, *map(str, parts)]))


def new_candidates(state: SearchState) -> list[NewCandidate]:
    """Iteration 0: N expansions. Later: c = N/M children for each survivor of the previous iteration."""
    params, k = state.params, state.iteration
    if k == 0:
        return [NewCandidate(candidate_id(0, n), n, None, n + 1) for n in range(params.N)]
    c = params.children_per_parent
    parents = state.iterations[k - 1].survivors
    return [
        NewCandidate(candidate_id(k, p * c + j), p * c + j, parent_id, j + 1)
        for p, parent_id in enumerate(parents)
        for j in range(c)
    ]


def parents(state: SearchState) -> list[str]:
    return state.iterations[state.iteration - 1].survivors if state.iteration > 0 else []


def current_pool(state: SearchState) -> list[str]:
    """The candidates ranked this iteration: the parents (elitism) and every new candidate with an image."""
    fresh = [c.id for c in state.candidates_of(state.iteration) if not c.failed and c.image_path]
    return parents(state) + fresh


def planned_votes(state: SearchState) -> list[PlannedVote]:
    """Every pair of the pool, E times, except pairs of parents.

    Parents all sat in the previous iteration's pool, so each pair of them was already asked for then;
    their votes are still in state.votes and feed this iteration's fit.
    """
    known = set(parents(state))
    votes = []
    for a, b in combinations(sorted(current_pool(state)), 2):
        if a in known and b in known:
            continue
        for v in range(1, state.params.E + 1):
            # One coin per vote: position bias of the judge averages out over the ensemble.
            a_first = seeded_random(state.params.seed, "order", a, b, v).random() < 0.5
            votes.append(PlannedVote(a, b, v, a if a_first else b))
    return votes


def ranked_candidates(state: SearchState) -> list[str]:
    """Every candidate that ever had an image: the fit spans the session, losers included."""
    return [c.id for c in state.candidates if not c.failed and c.image_path]


def ranking_feedback(state: SearchState, candidate_id: str) -> tuple[list[str], list[str]]:
    """(strengths the judge named when the candidate won, weaknesses when it lost), newest first, distinct."""
    own = [v for v in state.votes if candidate_id in (v.a, v.b)]
    own.sort(key=lambda v: (-v.iteration, v.b if v.a == candidate_id else v.a, v.vote_index))
    strengths = _distinct(v.strengths for v in own if v.winner == candidate_id)
    weaknesses = _distinct(v.weaknesses for v in own if v.winner != candidate_id)
    return strengths[:FEEDBACK_ITEMS], weaknesses[:FEEDBACK_ITEMS]


def lineage(state: SearchState, candidate_id: str) -> list[str]:
    """The candidate, its parent, its grandparent ... back to the iteration-0 ancestor."""
    chain = [candidate_id]
    while (parent_id := state.candidate(chain[-1]).parent_id) is not None:
        chain.append(parent_id)
    return chain


def _distinct(texts: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for text in texts:
        text = text.strip()
        if text:
            seen.setdefault(text, None)
    return list(seen)
