"""Every bad upload gets a 4xx JSON error naming the problem, the next good request still succeeds,
and /metrics counts exactly what happened."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from resnexus.serve import Limits
from tests.serve.conftest import image_files, upload


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(out, "JPEG")
    return out.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels in a few bytes: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


JPEG = _jpeg()

# (case, request kwargs, status, error message, reason counted in /metrics)
CASES = [
    (
        "not an image",
        {"files": upload(("notes.txt", b"hello, this is text"))},
        415,
        "notes.txt: not an image (first bytes: b'hello, this ')",
        "not-an-image",
    ),
    (
        "truncated JPEG",
        {"files": upload(("cut.jpg", JPEG[: len(JPEG) // 2]))},
        400,
        None,  # Pillow's wording of how much is missing: checked by prefix below
        "truncated",
    ),
    (
        "decompression bomb",
        {"files": upload(("bomb.png", _png_header_only(12_000, 10_000)))},
        413,
        "bomb.png: 12000 x 10000 = 120 MP, over the 100 MP limit: too large to decode safely (a decompression bomb?)",
        "decompression-bomb",
    ),
    (
        "bomb beyond Pillow's own limit",
        {"files": upload(("huge.png", _png_header_only(50_000, 50_000)))},
        413,
        "huge.png: more pixels than the 100 MP limit: too large to decode safely",
        "decompression-bomb",
    ),
    (
        "file over the size limit",
        {"files": upload(("big.jpg", b"\xff\xd8" + b"\0" * 5000))},
        413,
        "big.jpg: over the limit of 0.00391 MB per file",
        "file-too-large",
    ),
    (
        "empty body",
        {"content": b"", "headers": {"content-type": "multipart/form-data; boundary=xyz"}},
        400,
        "empty request body: send one or more images in the field 'files'",
        "empty-body",
    ),
    (
        "no files",
        {"data": {"note": "hello"}, "files": [("other", ("a.png", b"x", "image/png"))]},
        400,
        "no files: send one or more images in the multipart field 'files'",
        "no-files",
    ),
    (
        "wrong content type",
        {"content": b'{"image": "..."}', "headers": {"content-type": "application/json"}},
        415,
        "Content-Type must be multipart/form-data with images in 'files' (got application/json)",
        "wrong-content-type",
    ),
    (
        "too many files",
        {"files": upload(*[(f"{i}.jpg", JPEG) for i in range(4)])},
        413,
        "more than 3 files in one request (the limit)",
        "too-many-files",
    ),
    (
        "empty file",
        {"files": upload(("zero.png", b""))},
        400,
        "zero.png: the file is empty (0 bytes)",
        "empty-file",
    ),
]
LIMITS = Limits(max_file_bytes=4096, max_files=3)


@pytest.mark.parametrize(("case", "request_kwargs", "status", "message", "reason"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_and_the_server_keeps_serving(
    make_client, photos, case, request_kwargs, status, message, reason
):
    client = make_client(limits=LIMITS)
    response = client.post("/v1/predict", **request_kwargs)
    assert response.status_code == status
    error = response.json()["error"]
    if message is None:
        assert error.startswith(
            "cut.jpg: truncated image: cannot decode image cut.jpg: OSError: image file is truncated"
        )
    else:
        assert error == message
    good = client.post("/v1/predict", files=upload(*image_files(photos)[:2]))
    assert good.status_code == 200 and len(good.json()["predictions"]) == 2
    counts = _samples(client.get("/metrics").text)
    assert counts[("resnexus_errors_total", (("reason", reason),))] == 1
    assert counts[("resnexus_requests_total", (("endpoint", "/v1/predict"), ("status", str(status))))] == 1
    assert counts[("resnexus_requests_total", (("endpoint", "/v1/predict"), ("status", "200")))] == 1


def test_nothing_from_a_request_reaches_the_file_system(make_client, monkeypatch):
    import builtins
    import tempfile

    import starlette.formparsers

    real_open = builtins.open

    def read_only_open(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+"):
            raise AssertionError(f"a request opened {file!r} for writing")
        return real_open(file, mode, *args, **kwargs)

    def refuse(*args, **kwargs):
        raise AssertionError("a request created a temporary file")

    client = make_client()
    for name in ("SpooledTemporaryFile", "NamedTemporaryFile", "TemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, refuse)
    monkeypatch.setattr(starlette.formparsers, "SpooledTemporaryFile", refuse)
    monkeypatch.setattr(builtins, "open", read_only_open)
    monkeypatch.setattr(io, "open", read_only_open)
    large = io.BytesIO()  # over Starlette's 1 MB in-memory spool
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (800, 800, 3), dtype=np.uint8)).save(large, "PNG")
    assert len(large.getvalue()) > 1024 * 1024
    response = client.post("/v1/predict", files=upload(("large.png", large.getvalue())))
    assert response.status_code == 200
    assert client.post("/v1/explain", files=upload(("large.png", large.getvalue()))).status_code == 200


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_what_happened(make_client, photos):
    client = make_client(max_batch=1)
    files = image_files(photos)
    for count in (1, 3, 2):
        assert client.post("/v1/predict", files=upload(*files[:count])).status_code == 200
    assert client.post("/v1/predict", files=upload(("x.txt", b"text"))).status_code == 415
    assert client.get("/healthz").status_code == 200
    counts = _samples(client.get("/metrics").text)
    predict = ("endpoint", "/v1/predict")
    assert counts[("resnexus_requests_total", (predict, ("status", "200")))] == 3
    assert counts[("resnexus_requests_total", (predict, ("status", "415")))] == 1
    assert counts[("resnexus_requests_total", (("endpoint", "/healthz"), ("status", "200")))] == 1
    assert counts[("resnexus_errors_total", (("reason", "not-an-image"),))] == 1
    assert counts[("resnexus_images_total", ())] == 6
    assert counts[("resnexus_request_duration_seconds_count", (predict,))] == 4
    assert counts[("resnexus_batch_size_count", ())] == 6  # batch of one: one batch per image
    assert counts[("resnexus_batch_size_sum", ())] == 6
    assert counts[("resnexus_batch_size_bucket", (("le", "1.0"),))] == 6


def test_a_failure_inside_the_model_is_a_json_500_and_counted(make_client, photos):
    client = make_client()

    def broken(crops):
        raise RuntimeError("out of memory in /srv/models/secret/run")

    client.app.state.server.batcher.run = broken
    response = client.post("/v1/predict", files=upload(image_files(photos)[0]))
    assert response.status_code == 500
    assert response.json() == {"error": "internal error (RuntimeError): the server's log has the details"}
    counts = _samples(client.get("/metrics").text)
    assert counts[("resnexus_errors_total", (("reason", "internal"),))] == 1
    assert counts[("resnexus_requests_total", (("endpoint", "/v1/predict"), ("status", "500")))] == 1
