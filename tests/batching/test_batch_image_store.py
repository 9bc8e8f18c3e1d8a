"""Content-addressed image store: refs, idempotent writes, data URLs and their exact lengths."""

from __future__ import annotations

import base64
import hashlib

import pytest
from PIL import Image

from batch_pipeline.batching.image_store import REF_PREFIX, is_ref


def test_put_is_content_addressed_idempotent_and_round_trips_through_a_data_url(image_store, png_bytes):
    data = png_bytes(3, size=(33, 21))
    ref = image_store.put(data)
    assert ref == f"{REF_PREFIX}{hashlib.sha256(data).hexdigest()}.png"
    assert image_store.put(data) == ref
    assert image_store.read(ref) == data
    assert [p.name for p in image_store.root.rglob("*") if p.is_file()] == [
        ref[len(REF_PREFIX) :]
    ]  # no temp files left
    assert image_store.put(png_bytes(4)) != ref
    prefix, _, payload = image_store.data_url(ref).partition(",")
    assert prefix == "data:image/png;base64"
    assert base64.b64decode(payload) == data


@pytest.mark.parametrize("extra", [0, 1, 2])
def test_data_url_length_is_exact_for_every_size_modulo_three(image_store, png_bytes, extra):
    data = png_bytes(6) + b"\0" * extra  # three consecutive lengths cover every remainder mod 3
    ref = image_store.put(data)
    assert image_store.data_url_length(ref) == len(image_store.data_url(ref))


@pytest.mark.parametrize("bad", ["https://example.com/a.png", "bp-image:abc.png", "bp-image:" + "G" * 64 + ".png"])
def test_malformed_refs_are_rejected(image_store, bad):
    with pytest.raises(ValueError):
        image_store.path(bad)


def test_put_file_keeps_the_suffix_and_its_mime_type(image_store, tmp_path):
    src = tmp_path / "photo.jpg"
    Image.new("RGB", (12, 8), (200, 30, 30)).save(src, format="JPEG")
    ref = image_store.put_file(src)
    assert is_ref(ref) and ref.endswith(".jpg")
    assert image_store.read(ref) == src.read_bytes()
    assert image_store.data_url(ref).startswith("data:image/jpeg;base64,")


def test_gif_images_are_labelled_image_gif(image_store, tmp_path):
    src = tmp_path / "anim.gif"
    Image.new("P", (8, 8)).save(src, format="GIF")
    ref = image_store.put_file(src)
    assert image_store.data_url(ref).startswith("data:image/gif;base64,")
