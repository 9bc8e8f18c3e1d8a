"""Records that cross module boundaries in the batch core (the vocabulary is in `vocabulary.py`, the
records the ledger stores in `records.py`)."""
from __future__ import annotations

from batch_pipeline.records import RequestOutcome
from batch_pipeline.vocabulary import Endpoint, Outcome, Tier

__all__ = ["Endpoint", "Outcome", "RequestOutcome", "Tier"]
