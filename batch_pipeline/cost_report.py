"""The cost report: ledger result rows -> spend by day, model, tier and operation, with the three figures:
paid, the standard tier's price for the calls made (batch/flex savings), and what the cache avoided (its own
column: a cache hit is no call, so it never counts as a batch discount).

Framework-free (the `cost_report` asset and tests call it): a markdown table to the cent, a CSV with the
exact Decimal amounts and a PNG chart per day, written under BATCH_PIPELINE_HOME/reports/.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from batch_pipeline.batching.pricing import format_usd
from batch_pipeline.ledger.reader import CostRow, LedgerReader

CSV_COLUMNS = (
    "day",
    "model",
    "tier",
    "operation",
    "calls",
    "input_tokens",
    "output_tokens",
    "images",
    "cost_usd",
    "standard_cost_usd",
    "saved_usd",
    "saved_share",
    "cache_avoided_usd",
)


def standard_for_calls(row: CostRow) -> Decimal:
    """What the standard tier would have charged for the calls this row made (a cache hit made none)."""
    return Decimal(0) if row.tier == "cache" else row.standard_cost_usd


def cache_avoided(row: CostRow) -> Decimal:
    return row.standard_cost_usd if row.tier == "cache" else Decimal(0)


def saved(row: CostRow) -> Decimal:
    """The batch/flex discount: standard price of the calls made, less what was paid."""
    return standard_for_calls(row) - row.cost_usd


def saved_share(paid: Decimal, standard: Decimal) -> Decimal | None:
    """Savings as a share of the standard price (exact); None when nothing would have been paid."""
    return (standard - paid) / standard if standard else None


def percent(share: Decimal | None) -> str:
    return "-" if share is None else f"{share * 100:.1f}%"


@dataclass(frozen=True)
class ReportFiles:
    csv: Path
    chart: Path


@dataclass(frozen=True)
class CostReport:
    rows: list[CostRow]

    @property
    def paid(self) -> Decimal:
        return sum((r.cost_usd for r in self.rows), Decimal(0))

    @property
    def standard(self) -> Decimal:
        """The standard tier's price of the calls made (cache hits excluded)."""
        return sum((standard_for_calls(r) for r in self.rows), Decimal(0))

    @property
    def cache_avoided(self) -> Decimal:
        return sum((cache_avoided(r) for r in self.rows), Decimal(0))

    def by_tier(self) -> dict[str, tuple[Decimal, Decimal]]:
        """tier -> (paid, standard price of the calls made)."""
        return self._totals(lambda r: r.tier)

    def by_day(self) -> dict[str, tuple[Decimal, Decimal]]:
        return self._totals(lambda r: r.day.isoformat())

    def _totals(self, key: Callable[[CostRow], str]) -> dict[str, tuple[Decimal, Decimal]]:
        """(paid, standard price) per key, in key order."""
        totals: dict[str, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
        for r in self.rows:
            totals[key(r)][0] += r.cost_usd
            totals[key(r)][1] += standard_for_calls(r)
        return {k: (p, s) for k, (p, s) in sorted(totals.items())}

    def to_markdown(self) -> str:
        if not self.rows:
            return "_No results recorded yet._"
        lines = [
            "| day | model | tier | operation | calls | input tok | output tok | images | paid"
            " | standard for these calls | batch/flex saved | saved % | cache avoided |",
            "|" + "---|" * 13,
        ]
        for r in self.rows:
            lines.append(
                f"| {r.day} | {r.model} | {r.tier} | {r.operation} | {r.calls:,} | {r.input_tokens:,}"
                f" | {r.output_tokens:,} | {r.images:,} | {format_usd(r.cost_usd)}"
                f" | {format_usd(standard_for_calls(r))}"
                f" | {format_usd(saved(r))} | {percent(saved_share(r.cost_usd, standard_for_calls(r)))}"
                f" | {format_usd(cache_avoided(r))} |"
            )
        lines.append(
            f"| **total** | | | | {sum(r.calls for r in self.rows):,} | | | | **{format_usd(self.paid)}**"
            f" | {format_usd(self.standard)} | **{format_usd(self.standard - self.paid)}**"
            f" | {percent(saved_share(self.paid, self.standard))} | **{format_usd(self.cache_avoided)}** |"
        )
        return "\n".join(lines)

    def write_csv(self, path: Path) -> Path:
        """Exact amounts (the ledger's 12 decimal places), one line per (day, model, tier, operation)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(CSV_COLUMNS)
            for r in self.rows:
                share = saved_share(r.cost_usd, standard_for_calls(r))
                writer.writerow(
                    [
                        r.day.isoformat(),
                        r.model,
                        r.tier,
                        r.operation,
                        r.calls,
                        r.input_tokens,
                        r.output_tokens,
                        r.images,
                        r.cost_usd,
                        standard_for_calls(r),
                        saved(r),
                        "" if share is None else share.normalize(),
                        cache_avoided(r),
                    ]
                )
        return path

    def write_chart(self, path: Path) -> Path:
        """Per day: what was paid next to what the same usage costs on the standard tier."""
        path.parent.mkdir(parents=True, exist_ok=True)
        days = list(self.by_day().items())[-14:]  # two weeks fit the width
        width, height, left, bottom, top = 900, 420, 90, 70, 70
        img = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(img)
        font, small = ImageFont.load_default(16), ImageFont.load_default(12)
        draw.text((left, 20), "Spend per day: paid vs. standard-tier price of the calls made", fill="black", font=font)
        peak = max((s for _, (_p, s) in days), default=Decimal(0)) or Decimal(1)
        plot_h = height - top - bottom
        draw.line([(left, top), (left, height - bottom), (width - 20, height - bottom)], fill="black")
        for tick in range(5):
            value = peak * tick / 4
            y = height - bottom - plot_h * tick / 4
            draw.line([(left - 5, y), (left, y)], fill="black")
            draw.text((8, y - 7), format_usd(value), fill="black", font=small)
        slot = (width - left - 40) / max(1, len(days))
        bar = min(60, slot / 3)
        for i, (day, (paid, standard)) in enumerate(days):
            x = left + 20 + i * slot
            for j, (amount, colour) in enumerate(((paid, "#2b6cb0"), (standard, "#cbd5e0"))):
                h = float(plot_h * amount / peak)
                draw.rectangle([x + j * bar, height - bottom - h, x + (j + 1) * bar - 2, height - bottom], fill=colour)
            draw.text((x, height - bottom + 8), day, fill="black", font=small)
            share = saved_share(paid, standard)
            draw.text((x, height - bottom + 26), f"saved {percent(share)}", fill="#2f855a", font=small)
        draw.rectangle([width - 260, 48, width - 246, 60], fill="#2b6cb0")
        draw.text((width - 240, 46), "paid", fill="black", font=small)
        draw.rectangle([width - 180, 48, width - 166, 60], fill="#cbd5e0")
        draw.text((width - 160, 46), "standard price", fill="black", font=small)
        img.save(path, format="PNG")
        return path

    def write(self, directory: Path, stem: str = "cost_report") -> ReportFiles:
        return ReportFiles(
            csv=self.write_csv(directory / f"{stem}.csv"), chart=self.write_chart(directory / f"{stem}.png")
        )


def build_cost_report(reader: LedgerReader) -> CostReport:
    return CostReport(rows=reader.cost_rows() if reader.exists() else [])
