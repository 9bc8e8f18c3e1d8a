"""The batch core: requests -> JSONL files -> OpenAI batches -> classified results.

Framework-free: nothing here imports Dagster.
"""
