"""The persisted state of one beam search: candidates, votes, per-iteration rankings, round statistics.

steps.start_search creates it and steps.apply_round replaces it; orchestrators store it as JSON between.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from batch_pipeline.vocabulary import RoundId

from .params import SearchParams
from .ranking import CandidateScore

RoundName = Literal["text", "image", "vision"]  # the order of the rounds in every iteration

# extra="forbid" everywhere: a state written by a different version of this code fails loudly on load
# instead of silently dropping fields.
_STRICT = ConfigDict(extra="forbid")


class Candidate(BaseModel):
    """One prompt pair and its image. Kept after failing or losing, for the record and for lineage."""

    model_config = _STRICT

    id: str  # i{iteration}c{index:02d}
    iteration: int
    parent_id: str | None = None  # None in iteration 0
    what: str = ""
    how: str = ""
    combined: str = ""
    critique: str = ""  # empty in iteration 0
    recommendation: str = ""
    image_path: str | None = None
    failed: bool = False
    error: str | None = None  # "text: ..." or "image: ...": which round dropped it


class Vote(BaseModel):
    """One successful vision vote. a < b by id; the winners are candidate ids, not "A"/"B"."""

    model_config = _STRICT

    iteration: int
    a: str
    b: str
    vote_index: int  # 1..E
    first_shown: str  # the candidate shown as image A in this vote
    alignment_winner: str
    aesthetics_winner: str
    winner: str
    strengths: str  # of the overall winner; becomes its refinement feedback
    weaknesses: str  # of the overall loser; likewise
    reason: str = ""


class IterationRecord(BaseModel):
    """The ranking of one iteration's pool, from the session-wide fit as of that iteration."""

    model_config = _STRICT

    iteration: int
    pool: list[str]
    scores: dict[str, CandidateScore]
    ranks: dict[str, int]  # 1 = best
    survivors: list[str]  # best first; the parents of the next iteration
    best_id: str
    best_score: float


class RoundStats(BaseModel):
    model_config = _STRICT

    iteration: int
    round: RoundName
    calls: int
    succeeded: int  # answered with a usable result
    failed: int  # errors, missing results and unparseable answers
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    # Money is the ledger's (exact, per request); states saved before that carried float sums here.

    @model_validator(mode="before")
    @classmethod
    def _drop_old_float_costs(cls, data: object) -> object:
        if isinstance(data, dict) and ("cost_usd" in data or "standard_cost_usd" in data):
            return {k: v for k, v in data.items() if k not in ("cost_usd", "standard_cost_usd")}
        return data


class SearchState(BaseModel):
    """Everything needed to continue a search, and everything worth keeping once it is done."""

    model_config = _STRICT

    session_id: str
    user_prompt: str
    params: SearchParams
    iteration: int = 0
    next_round: RoundName = "text"
    done: bool = False
    candidates: list[Candidate] = Field(default_factory=list)
    votes: list[Vote] = Field(default_factory=list)
    iterations: list[IterationRecord] = Field(default_factory=list)
    rounds: list[RoundStats] = Field(default_factory=list)
    winner_id: str | None = None
    lineage: list[str] = Field(default_factory=list)  # winner first, back to its iteration-0 ancestor
    # Every iteration's best_id rescored with the final fit: BT scores are comparable only within one
    # fit, so best_score of different iterations must not be compared; these can be. Index = iteration.
    final_best_scores: list[float] = Field(default_factory=list)

    @property
    def round_id(self) -> RoundId:
        """The round to run next (its requests carry it in the ledger)."""
        return RoundId(self.iteration, self.next_round)

    def candidate(self, candidate_id: str) -> Candidate:
        for candidate in self.candidates:
            if candidate.id == candidate_id:
                return candidate
        raise KeyError(f"no candidate {candidate_id!r} in session {self.session_id!r}")

    def candidates_of(self, iteration: int) -> list[Candidate]:
        return [c for c in self.candidates if c.iteration == iteration]
