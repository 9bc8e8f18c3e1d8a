"""The cost report: spend by day, model, tier and operation, exact in the CSV, to the cent in the table."""

from __future__ import annotations

import csv
from datetime import date
from decimal import Decimal

import dagster as dg
from PIL import Image

from batch_pipeline.batching.pricing import format_usd as money
from batch_pipeline.cost_report import CostReport
from batch_pipeline.defs.reporting import cost_report, cost_report_job, daily_cost_report_schedule
from batch_pipeline.ledger import Ledger
from batch_pipeline.ledger.reader import CostRow
from tests.defs.support import launch, metadata, run_session_to_end


def test_cost_report_materialises_table_csv_and_chart_with_half_price_batches(instance, resources):
    assert launch(instance, resources, "s1", N=2, M=1, K=1, E=1).success
    run_session_to_end(instance, resources, ["s1"])

    result = dg.materialize([cost_report], instance=instance, resources=resources)
    meta = metadata(result, "cost_report")
    assert meta["batch_saved_share"] == "50.0%"
    assert "| gpt-4.1-mini | batch | expand | 2 |" in meta["report"]
    assert "| gpt-image-1-mini | batch | image | 2 |" in meta["report"]

    with open(meta["csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["operation"] for r in rows} == {"expand", "image", "compare"}
    for row in rows:
        paid, standard = Decimal(row["cost_usd"]), Decimal(row["standard_cost_usd"])
        assert paid > 0 and paid * 2 == standard, "exact Decimals: batch is half the standard price"
        assert Decimal(row["saved_share"]) == Decimal("0.5")
    totals = Ledger(resources["ledger"].database).cost_figures()
    assert sum(Decimal(r["cost_usd"]) for r in rows) == totals.paid
    with Image.open(meta["chart"]) as chart:
        assert chart.format == "PNG" and chart.size == (900, 420)


def test_the_report_runs_daily_and_by_hand():
    assert daily_cost_report_schedule.job_name == cost_report_job.name == "cost_report_job"
    assert daily_cost_report_schedule.default_status == dg.DefaultScheduleStatus.RUNNING


def test_money_reads_with_enough_digits_and_cache_hits_are_their_own_column():
    assert money(Decimal("1.005")) == "$1.00" and money(Decimal("1.015")) == "$1.02"  # banker's rounding
    assert money(Decimal("0.0034")) == "$0.0034" and money(Decimal("0.0000123")) == "$0.000012"
    assert money(Decimal(0)) == "$0" and money(Decimal("1234.5")) == "$1,234.50"
    report = CostReport(
        [
            CostRow(
                date(2026, 11, 1), "gpt-5-mini", "standard", "expand", 1, 10, 10, 0, Decimal("0.25"), Decimal("0.25")
            ),
            CostRow(date(2026, 11, 1), "gpt-5-mini", "cache", "expand", 1, 10, 10, 0, Decimal(0), Decimal("0.25")),
        ]
    )
    table = report.to_markdown()
    assert "| standard | expand | 1 | 10 | 10 | 0 | $0.2500 | $0.2500 | $0 | 0.0% | $0 |" in table
    # A cache hit made no call: nothing at the standard price, no batch saving, the avoided cost apart.
    assert "| cache | expand | 1 | 10 | 10 | 0 | $0 | $0 | $0 | - | $0.2500 |" in table
    assert "| **total** | | | | 2 | | | | **$0.2500** | $0.2500 | **$0** | 0.0% | **$0.2500** |" in table
