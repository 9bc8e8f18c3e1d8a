"""An OpenAI-compatible HTTP simulator (files, batches, chat, images) so the pipeline runs offline.

The real `openai` SDK talks to `Simulator.serve()`; `server.py` has the entry point.
"""

# Deliberate departures from the real API, each chosen for speed or determinism:
# - content is derived from a hash of the request (+ seed), never generated; usage is estimated
#   at ~4 characters a token, plus 85 (detail "low") or 765 tokens per input image;
# - images are `image_size` pixels square whatever `size` asks for; the requested size is echoed;
# - a batch's lines all run at the moment it leaves in_progress (request_counts stay 0 before);
#   phase durations come from the config, not from load;
# - batches may target /v1/chat/completions and /v1/images/generations only (others: 400 at create);
# - any model id is accepted and retrievable; files past `expires_at` are kept;
# - faults live in memory and do not survive a restart, unlike files and batches.
from .config import ManualClock, SimulatorConfig, SystemClock
from .content import STYLE_VOCABULARY
from .faults import FaultRule
from .server import Simulator

__all__ = ["STYLE_VOCABULARY", "FaultRule", "ManualClock", "Simulator", "SimulatorConfig", "SystemClock"]
