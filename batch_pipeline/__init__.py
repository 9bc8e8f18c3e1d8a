"""batch_pipeline: cost-sensitive LLM and image workloads through the OpenAI Batch API.

The batch core (`batching`, `ledger`) and the beam search (`search`) import no Dagster;
`defs/` is the thin Dagster layer over them.
"""
