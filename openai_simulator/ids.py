"""Object ids in the real API's formats: file-..., batch_..., batch_req_..., chatcmpl-..., req_....

Random for stored objects (unique across simulator restarts), derived from a hash where a stable id helps.
"""

from __future__ import annotations

import hashlib
import secrets

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _encode62(number: int, length: int) -> str:
    chars = []
    for _ in range(length):
        number, remainder = divmod(number, 62)
        chars.append(_BASE62[remainder])
    return "".join(chars)


def new_file_id() -> str:
    return "file-" + "".join(secrets.choice(_BASE62) for _ in range(22))


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(16)


def new_request_id() -> str:
    return "req_" + secrets.token_hex(16)


def derived_base62(material: bytes | str, length: int) -> str:
    data = material.encode() if isinstance(material, str) else material
    return _encode62(int.from_bytes(hashlib.sha256(data).digest(), "big"), length)


def derived_hex(material: bytes | str, length: int = 32) -> str:
    data = material.encode() if isinstance(material, str) else material
    return hashlib.sha256(data).hexdigest()[:length]
