"""The Dagster layer: sessions as partitioned assets, sensor-driven batches, a scheduled cost report.

Short adapters over the framework-free core; `batch_pipeline.definitions` assembles them.
"""
