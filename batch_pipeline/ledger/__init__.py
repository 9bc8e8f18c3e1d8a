"""The DuckDB ledger: every request, batch, result and cost. The only code that writes SQL."""

from batch_pipeline.errors import LedgerError, StateTransitionError
from batch_pipeline.ledger.ledger import Ledger
from batch_pipeline.ledger.states import BatchPhase, RequestState

__all__ = ["BatchPhase", "Ledger", "LedgerError", "RequestState", "StateTransitionError"]
