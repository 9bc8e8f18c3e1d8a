"""What the UI shows: escaped table cells, thumbnails as data URLs, progress that never says done too early."""

from __future__ import annotations

import base64
import io

from PIL import Image

from batch_pipeline.batching.image_store import ImageStore
from batch_pipeline.defs.rendering import batches_md, cell, thumbnail_data_url
from batch_pipeline.ledger.reader import BatchOverview


def test_cells_are_one_line_with_pipes_escaped_and_long_text_cut():
    assert cell("a | b\nc") == "a \\| b c"
    assert cell("x" * 500, limit=10) == "x" * 9 + "…"


def test_a_thumbnail_is_a_small_jpeg_found_by_name_in_the_store(tmp_path):
    store = ImageStore(tmp_path / "images")
    buffer = io.BytesIO()
    Image.new("RGB", (1024, 512), "red").save(buffer, format="PNG")
    ref = store.put(buffer.getvalue())
    moved = tmp_path / "elsewhere" / store.path(ref).name  # a path recorded under an old home
    url = thumbnail_data_url(str(moved), store)
    assert url.startswith("data:image/jpeg;base64,")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as thumb:
        assert thumb.size == (160, 80)
    assert thumbnail_data_url(None, store) is None
    assert thumbnail_data_url(str(tmp_path / "missing.png"), store) is None


def batch(status: str, completed: int) -> BatchOverview:
    return BatchOverview(
        "bpb_1",
        "batch_1",
        "gpt-5-mini",
        "/v1/chat/completions",
        "created",
        status,
        10,
        completed,
        0,
        ("s1", "s2"),
        1_790_000_000.0,
    )


def test_finalizing_is_never_shown_as_done():
    assert "| 99% |" in batches_md([batch("finalizing", 10)])
    assert "| 50% |" in batches_md([batch("in_progress", 5)])
    assert "| 100% |" in batches_md([batch("completed", 10)])
    assert "| s1, s2 |" in batches_md([batch("completed", 10)])


def test_a_thumbnail_is_rendered_once_per_image_and_kept_beside_the_store(tmp_path):
    store = ImageStore(tmp_path / "images")
    buffer = io.BytesIO()
    Image.new("RGB", (512, 512), "blue").save(buffer, format="PNG")
    ref = store.put(buffer.getvalue())
    first = thumbnail_data_url(str(store.path(ref)), store)
    kept = list((store.root / "thumbnails").iterdir())
    assert [p.suffix for p in kept] == [".txt"] and kept[0].read_text() == first  # whole, no temp file left
    kept[0].write_text(first + "#read-back")  # the next view reads the kept one instead of encoding again
    assert thumbnail_data_url(str(store.path(ref)), store) == first + "#read-back"
    outside = tmp_path / "outside.png"  # not a content-named store file: never cached (its content may change)
    outside.write_bytes(buffer.getvalue())
    thumbnail_data_url(str(outside), store)
    assert len(list((store.root / "thumbnails").iterdir())) == 1
