"""Markdown for asset metadata: prompt tables, image thumbnails, rankings and batch progress.

Pure functions from ledger records to the text the Dagster UI shows; the assets attach their output.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image

from batch_pipeline.batching.image_store import REF_PREFIX, ImageStore
from batch_pipeline.batching.polling import progress
from batch_pipeline.ledger.reader import BatchOverview
from batch_pipeline.ledger.session_rows import CandidateRow
from batch_pipeline.search import SearchState

# Real images are 1024 px or more: a few MB each as data URLs. The UI gets small thumbnails so a
# ranking of 24 candidates stays a few hundred KB of metadata.
THUMBNAIL_PX = 160


def cell(text: object, limit: int = 300) -> str:
    """Text safe inside a markdown table cell: one line, pipes escaped, long text cut."""
    value = " ".join(str(text if text is not None else "").split()).replace("|", "\\|")
    return value if len(value) <= limit else value[: limit - 1] + "…"


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def thumbnail_data_url(image_path: str | None, store: ImageStore, px: int = THUMBNAIL_PX) -> str | None:
    """A JPEG thumbnail as a data URL, or None when the image is missing (JPEG: a generated picture's
    thumbnail encodes ~40x faster than an optimised PNG and is ~8x smaller in the event log).

    Found by file name in the store (content-addressed), so a moved BATCH_PIPELINE_HOME still works.
    A thumbnail is rendered once per image and kept beside the store (`thumbnails/`, named by the
    image's content name): a ranking shows the same pool's images every round, and encoding them again
    for every session in every tick run was most of a tick's view rendering.
    """
    if not image_path:
        return None
    path, in_store = Path(image_path), False
    try:
        candidate = store.path(f"{REF_PREFIX}{path.name}")
        if candidate.exists():
            path, in_store = candidate, True
    except ValueError:
        pass
    if not path.exists():
        return None
    cached = store.root / "thumbnails" / f"{path.stem}-{px}-jpeg.txt"
    if in_store and cached.exists():
        return cached.read_text()
    with Image.open(path) as opened:
        img = opened.convert("RGB")
        scale = px / max(img.size)
        img = img.resize(
            (max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS
        )
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=85)
    url = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    if in_store:  # only the store's content-named files: a name there is its content
        cached.parent.mkdir(exist_ok=True)
        partial = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
        partial.write_text(url)
        os.replace(partial, cached)  # readers see the whole thumbnail or none
    return url


def image_md(url: str | None, alt: str) -> str:
    return f"![{cell(alt, 40)}]({url})" if url else "(no image)"


def prompts_md(candidates: Sequence[CandidateRow]) -> str:
    if not candidates:
        return "_No candidates yet: the first text round has not finished._"
    return table(
        ["candidate", "parent", "WHAT", "HOW", "combined prompt", "status"],
        [
            (
                c.candidate_id,
                c.parent_id or "-",
                cell(c.what),
                cell(c.how),
                cell(c.combined, 400),
                "failed" if c.failed else "ok",
            )
            for c in candidates
        ],
    )


def thumbnails_md(candidates: Sequence[CandidateRow], store: ImageStore) -> str:
    with_images = [c for c in candidates if c.image_path]
    if not with_images:
        return "_No images yet: the image round of this iteration has not finished._"
    return table(
        ["candidate", "image", "prompt"],
        [
            (c.candidate_id, image_md(thumbnail_data_url(c.image_path, store), c.candidate_id), cell(c.combined, 200))
            for c in with_images
        ],
    )


def ranking_md(state: SearchState, store: ImageStore) -> str:
    """The latest ranking, best first, with images and scores; the winner and its lineage once done."""
    if not state.iterations:
        return "_Not ranked yet: the first vision round has not finished._"
    record = state.iterations[-1]
    order = sorted(record.pool, key=lambda cid: record.ranks[cid])
    rows = []
    for cid in order:
        c = state.candidate(cid)
        s = record.scores[cid]
        mark = (
            " (winner)"
            if cid == state.winner_id
            else (" (survives)" if cid in record.survivors and not state.done else "")
        )
        rows.append(
            (
                f"{record.ranks[cid]}",
                f"**{cid}**{mark}",
                image_md(thumbnail_data_url(c.image_path, store), cid),
                f"{s.combined:+.3f}",
                f"{s.alignment:+.3f}",
                f"{s.aesthetics:+.3f}",
                cell(c.combined, 220),
            )
        )
    head = (
        f"### Winner: {state.winner_id}\n\nLineage: {' ← '.join(state.lineage)}\n\n"
        if state.done and state.winner_id
        else f"### Ranking after iteration {record.iteration} (session still running)\n\n"
    )
    return head + table(["rank", "candidate", "image", "score", "alignment", "aesthetics", "prompt"], rows)


def batches_md(batches: Sequence[BatchOverview]) -> str:
    """Batches with status, request counts and progress; `finalizing` is never shown as done."""
    if not batches:
        return "_No batches yet._"
    rows = []
    for b in batches:
        share = progress(b.status or "", b.completed_count, b.failed_count, b.request_count)
        rows.append(
            (
                b.batch_key[:16],
                b.openai_batch_id or "-",
                b.phase,
                b.status or "-",
                b.model,
                b.request_count,
                b.completed_count if b.completed_count is not None else "-",
                b.failed_count if b.failed_count is not None else "-",
                f"{share:.0%}",
                ", ".join(b.sessions) or "-",
                _time(b.created_at),
            )
        )
    return table(
        [
            "batch",
            "OpenAI id",
            "phase",
            "status",
            "model",
            "requests",
            "completed",
            "failed",
            "progress",
            "sessions",
            "created (UTC)",
        ],
        rows,
    )


def _time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")
