"""The `cost_report` asset, its job and its daily schedule: what was spent, and saved against the standard tier.

The report itself is built by `batch_pipeline.cost_report`; this module only puts it into Dagster.
"""

from datetime import UTC, datetime

import dagster as dg

from batch_pipeline.batching.pricing import cost_lines, format_usd
from batch_pipeline.cost_report import build_cost_report, percent, saved_share
from batch_pipeline.defs.batch_assets import batch_results
from batch_pipeline.defs.resources import LEDGER_POOL, LedgerResource
from batch_pipeline.defs.session_assets import queued_requests


@dg.asset(
    deps=[batch_results, queued_requests],
    pool=LEDGER_POOL,
    group_name="reports",
    kinds={"duckdb", "csv"},
    description=(
        "Spend by day, model, tier and operation over every recorded result, next to the standard-tier "
        "price of the calls made, the batch/flex savings and, apart, what the cache avoided. "
        "A markdown table (to the cent) in the "
        "metadata, a CSV with exact amounts and a PNG chart under BATCH_PIPELINE_HOME/reports/. "
        "Materialised daily by `daily_cost_report_schedule`, or by hand."
    ),
)
def cost_report(context: dg.AssetExecutionContext, ledger: LedgerResource) -> dg.MaterializeResult:
    reader = ledger.reader(lock_timeout_s=10.0)
    report = build_cost_report(reader)
    # Reports live beside the ledger (BATCH_PIPELINE_HOME), one dated pair per materialisation day.
    directory = ledger.reports()
    files = report.write(directory, stem=f"cost_report-{datetime.now(UTC).date().isoformat()}")
    batch = report.by_tier().get("batch")
    context.log.info(
        f"cost report: paid {format_usd(report.paid)}, standard {format_usd(report.standard)}; {files.csv}"
    )
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.md(report.to_markdown()),
            "paid_usd": float(report.paid),
            "standard_price_usd": float(report.standard),
            "saved_usd": float(report.standard - report.paid),
            "saved_share": percent(saved_share(report.paid, report.standard)),
            "cache_avoided_usd": float(report.cache_avoided),
            "figures": "; ".join(cost_lines(reader.cost_figures())) if reader.exists() else "nothing recorded yet",
            "batch_saved_share": percent(saved_share(*batch)) if batch else "-",
            "csv": dg.MetadataValue.path(str(files.csv)),
            "chart": dg.MetadataValue.path(str(files.chart)),
            "rows": len(report.rows),
        }
    )


cost_report_job = dg.define_asset_job(
    "cost_report_job",
    selection=dg.AssetSelection.assets(cost_report),
    description="Rebuild the cost report (daily by schedule; launch it by hand any time).",
    tags={"batch_pipeline/kind": "report"},
)

daily_cost_report_schedule = dg.ScheduleDefinition(
    name="daily_cost_report_schedule",
    job=cost_report_job,
    cron_schedule="0 6 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="The cost report every day at 06:00 UTC.",
)
