"""Entry points: the `batch-pipeline` command (`main`), its `search` subcommand and the Dagster demo (`demo`)."""
