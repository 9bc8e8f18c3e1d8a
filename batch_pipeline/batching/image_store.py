"""Content-addressed image files: generated images land here once, requests refer to them by ref.

A vision request stores `bp-image:<sha256>` instead of base64, and the assembler inlines the
data URL only while streaming a batch file, so image bytes are never duplicated per request.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from pathlib import Path

REF_PREFIX = "bp-image:"
_MIME_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
}


class ImageStore:
    def __init__(self, root: Path | str):
        self.root = Path(root)

    def put(self, data: bytes, suffix: str = ".png") -> str:
        """Store bytes (idempotently) and return their ref."""
        digest = hashlib.sha256(data).hexdigest()
        suffix = suffix.lower()
        path = self._path(digest, suffix)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # write-then-rename: a crash never leaves a truncated file under a valid name
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        return f"{REF_PREFIX}{digest}{suffix}"

    def put_file(self, path: Path | str) -> str:
        return self.put(Path(path).read_bytes(), Path(path).suffix or ".png")

    def ref_for(self, path: Path | str) -> str:
        """The ref of an image file: derived from its name when it is one of ours, else stored now."""
        path = Path(path)
        ref = f"{REF_PREFIX}{path.name}"
        try:
            if self.path(ref) == path or (path.is_absolute() and self.path(ref).resolve() == path.resolve()):
                return ref
        except ValueError:
            pass
        return self.put_file(path)

    def path(self, ref: str) -> Path:
        digest, suffix = _split_ref(ref)
        return self._path(digest, suffix)

    def read(self, ref: str) -> bytes:
        return self.path(ref).read_bytes()

    def data_url(self, ref: str) -> str:
        return self.data_url_prefix(ref) + base64.b64encode(self.read(ref)).decode("ascii")

    def data_url_length(self, ref: str) -> int:
        """Length of `data_url(ref)` computed from the file size, without encoding it."""
        size = self.path(ref).stat().st_size
        return len(self.data_url_prefix(ref)) + 4 * ((size + 2) // 3)

    @staticmethod
    def data_url_prefix(ref: str) -> str:
        mime = _MIME_TYPES.get(Path(ref).suffix.lower(), "application/octet-stream")
        return f"data:{mime};base64,"

    def _path(self, digest: str, suffix: str) -> Path:
        return self.root / digest[:2] / f"{digest}{suffix}"


def is_ref(url: str) -> bool:
    return isinstance(url, str) and url.startswith(REF_PREFIX)


def _split_ref(ref: str) -> tuple[str, str]:
    if not is_ref(ref):
        raise ValueError(f"not an image ref: {ref[:40]!r}")
    rest = ref[len(REF_PREFIX) :]
    digest, dot, ext = rest.partition(".")
    if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
        raise ValueError(f"malformed image ref: {ref[:80]!r}")
    return digest, (dot + ext) if dot else ""
