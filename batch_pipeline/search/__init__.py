"""The image-generation beam search as pure, resumable steps over a JSON-serialisable state.

Framework-free and tier-agnostic: orchestrators drive it step by step; providers execute its calls.
"""

# The whole protocol, as run_search implements it:
#     state = start_search(prompt, params, session_id)
#     while not state.done:
#         state = apply_round(state, execute(plan_round(state)))
from .calls import Call, CallResult, ImageCall, TextCall, VisionCall, calls_adapter
from .params import IterationCallCounts, SearchParams, dependent_rounds, expected_call_counts
from .ranking import CandidateScore, fit_log_strengths, rank_candidates, score_candidates
from .schemas import Comparison, Expansion, RefineHow, Refinement, RefineWhat, strict_json_schema
from .state import Candidate, IterationRecord, RoundStats, SearchState, Vote
from .steps import Executor, SearchFailed, apply_round, plan_round, run_search, start_search

__all__ = [
    "Call",
    "CallResult",
    "Candidate",
    "CandidateScore",
    "Comparison",
    "Executor",
    "Expansion",
    "ImageCall",
    "IterationCallCounts",
    "IterationRecord",
    "RefineHow",
    "RefineWhat",
    "Refinement",
    "RoundStats",
    "SearchFailed",
    "SearchParams",
    "SearchState",
    "TextCall",
    "VisionCall",
    "Vote",
    "apply_round",
    "calls_adapter",
    "dependent_rounds",
    "expected_call_counts",
    "fit_log_strengths",
    "plan_round",
    "rank_candidates",
    "run_search",
    "score_candidates",
    "start_search",
    "strict_json_schema",
]
