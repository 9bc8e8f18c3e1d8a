"""Durable state under `data_dir`: file objects with their bytes, and batch records, one JSON file each.

Written by the file routes of `app.py` and by `batches.py` on every change, read back whole when a `Simulator` starts.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from .ids import new_file_id


def _write_json(path: Path, value: dict) -> None:
    # Write-then-rename, so a simulator stopped mid-write never leaves half a record behind.
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(orjson.dumps(value))
    os.replace(temporary, path)


class Store:
    """In-memory view of everything on disk; callers hold `lock` across read-modify-write."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.files_dir = self.root / "files"
        self.batches_dir = self.root / "batches"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.batches_dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.files: dict[str, dict] = {
            path.stem: orjson.loads(path.read_bytes()) for path in self.files_dir.glob("*.json")
        }
        self.batches: dict[str, dict] = {
            path.stem: orjson.loads(path.read_bytes()) for path in self.batches_dir.glob("*.json")
        }

    # --- files ---

    def content_path(self, file_id: str) -> Path:
        return self.files_dir / f"{file_id}.bin"

    def add_file(
        self,
        source: bytes | BinaryIO,
        *,
        filename: str,
        purpose: str,
        created_at: float,
        expires_at: int | None,
    ) -> dict:
        file_id = new_file_id()
        path = self.content_path(file_id)
        if isinstance(source, bytes):
            path.write_bytes(source)
        else:
            with path.open("wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
        record = {
            "id": file_id,
            "object": "file",
            "bytes": path.stat().st_size,
            "created_at": int(created_at),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "expires_at": expires_at,
            "status_details": None,
        }
        with self.lock:
            _write_json(self.files_dir / f"{file_id}.json", record)
            self.files[file_id] = record
        return record

    def delete_file(self, file_id: str) -> None:
        with self.lock:
            self.files.pop(file_id, None)
            (self.files_dir / f"{file_id}.json").unlink(missing_ok=True)
            self.content_path(file_id).unlink(missing_ok=True)

    # --- billing ---

    def record_billed(self, source: str, body: Any) -> None:
        """Append one answered (so billed) request to `billed.jsonl`: the simulator's own record of what was
        paid, for tests that check no request body is paid twice. `service_tier` is left out of the identity:
        the same body on flex, standard or in a batch is the same request."""
        identity = {k: v for k, v in body.items() if k != "service_tier"} if isinstance(body, dict) else body
        digest = hashlib.sha256(orjson.dumps(identity, option=orjson.OPT_SORT_KEYS)).hexdigest()
        with self.lock, (self.root / "billed.jsonl").open("ab") as fh:
            fh.write(orjson.dumps({"source": source, "body_sha256": digest}) + b"\n")

    # --- batches ---

    def input_copy_path(self, batch_id: str) -> Path:
        return self.batches_dir / f"{batch_id}.input.jsonl"

    def keep_input(self, batch_id: str, file_id: str) -> None:
        """Pin the input bytes to the batch, so deleting the uploaded file cannot break processing."""
        source, target = self.content_path(file_id), self.input_copy_path(batch_id)
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)

    def save_batch(self, record: dict) -> None:
        with self.lock:
            _write_json(self.batches_dir / f"{record['batch']['id']}.json", record)
            self.batches[record["batch"]["id"]] = record


def cursor_page(items: list[dict], after: str | None, limit: int) -> dict:
    """A page in the real list shape; `after` is the id of the last item the caller has already seen."""
    ids = [item["id"] for item in items]
    start = 0
    if after:
        # An unknown cursor yields an empty last page rather than an error.
        start = ids.index(after) + 1 if after in ids else len(ids)
    data = items[start : start + limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": start + limit < len(items),
    }
