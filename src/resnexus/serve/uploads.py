"""Reading the images of a request: parsed from the request stream into memory, checked while they
arrive, decoded from bytes.

python-multipart parses the body as it streams in (never spooled to disk, as Starlette's form
parser does above 1 MB), so an over-size file or one file too many is refused before the rest of
the body is read. Every refusal is an :class:`UploadError` naming the problem.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from ..data.check import MAX_PIXELS
from ..data.dataset import decode_image_bytes
from ..data.scan import DataError
from .options import Limits

FIELD = "files"  # the multipart field that carries the images


class UploadError(Exception):
    """A request refused: HTTP ``status``, a ``reason`` label for /metrics, and the message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


@dataclass
class Upload:
    name: str
    data: bytes


def _megabytes(n: int) -> str:
    return f"{n / (1024 * 1024):.3g} MB"


def _boundary(request: Request) -> bytes:
    """The multipart boundary of ``request``; other content types are refused."""
    kind, params = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data":
        got = request.headers.get("content-type") or "none"
        raise UploadError(
            415, "wrong-content-type", f"Content-Type must be multipart/form-data with images in '{FIELD}' (got {got})"
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadError(400, "bad-multipart", "multipart/form-data without a boundary")
    return boundary


class _Collector:
    """python-multipart's callbacks: collect the ``files`` parts into :attr:`uploads`; the first
    limit crossed is kept in :attr:`problem` (raising inside a callback would leave the parser
    half-way), and nothing more is collected after it."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.uploads: list[Upload] = []
        self.problem: UploadError | None = None
        self.part: dict[str, Any] = {}

    CALLBACKS = (
        "on_part_begin",
        "on_part_data",
        "on_part_end",
        "on_header_field",
        "on_header_value",
        "on_header_end",
        "on_headers_finished",
    )

    def callbacks(self) -> dict[str, Any]:
        """The callbacks by the names python-multipart's parser calls them."""
        return {name: getattr(self, name) for name in self.CALLBACKS}

    def _refuse(self, error: UploadError) -> None:
        if self.problem is None:
            self.problem = error

    def _name(self) -> str:
        return self.part["filename"] or f"{FIELD}[{len(self.uploads)}]"

    def on_part_begin(self) -> None:
        self.part = {"headers": {}, "field": b"", "value": b"", "data": bytearray(), "name": None, "filename": None}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.part["field"] += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.part["value"] += data[start:end]

    def on_header_end(self) -> None:
        self.part["headers"][self.part["field"].lower()] = self.part["value"]
        self.part["field"], self.part["value"] = b"", b""

    def on_headers_finished(self) -> None:
        _, disposition = parse_options_header(self.part["headers"].get(b"content-disposition", b""))
        self.part["name"] = disposition.get(b"name", b"").decode("utf-8", "replace")
        filename = disposition.get(b"filename")
        self.part["filename"] = filename.decode("utf-8", "replace") if filename is not None else None
        if self.part["name"] == FIELD and len(self.uploads) >= self.limits.max_files:
            self._refuse(
                UploadError(
                    413, "too-many-files", f"more than {self.limits.max_files} files in one request (the limit)"
                )
            )

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.problem is not None or self.part["name"] != FIELD:
            return
        self.part["data"] += data[start:end]
        if len(self.part["data"]) > self.limits.max_file_bytes:
            limit = _megabytes(self.limits.max_file_bytes)
            self._refuse(UploadError(413, "file-too-large", f"{self._name()}: over the limit of {limit} per file"))

    def on_part_end(self) -> None:
        if self.problem is None and self.part.get("name") == FIELD:
            self.uploads.append(Upload(self._name(), bytes(self.part["data"])))


async def read_uploads(request: Request, limits: Limits) -> list[Upload]:
    """The files of a ``multipart/form-data`` request's ``files`` field, parsed in memory as the
    body streams in; over-size files and too many files are refused before the rest is read."""
    collector = _Collector(limits)
    parser = MultipartParser(_boundary(request), collector.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            parser.write(chunk)
            if collector.problem is not None:
                raise collector.problem
        parser.finalize()
    except UploadError:
        raise
    except Exception as error:  # python-multipart's errors for malformed bodies
        raise UploadError(400, "bad-multipart", f"malformed multipart body: {error}") from None
    if collector.problem is not None:
        raise collector.problem
    if received == 0:
        raise UploadError(400, "empty-body", f"empty request body: send one or more images in the field '{FIELD}'")
    if not collector.uploads:
        raise UploadError(400, "no-files", f"no files: send one or more images in the multipart field '{FIELD}'")
    return collector.uploads


def decode_upload(upload: Upload, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """The uint8 RGB image (3, H, W) an upload holds, decoded from memory; refused with the reason
    (not an image, truncated, a decompression bomb) before anything large is allocated."""
    from PIL import Image, UnidentifiedImageError

    name, data = upload.name, upload.data
    if not data:
        raise UploadError(400, "empty-file", f"{name}: the file is empty (0 bytes)")
    limit = f"{max_pixels / 1e6:.0f} MP"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:  # reads the header only
                width, height = im.size
    except Image.DecompressionBombError:
        raise UploadError(
            413, "decompression-bomb", f"{name}: more pixels than the {limit} limit: too large to decode safely"
        ) from None
    except UnidentifiedImageError:
        raise UploadError(415, "not-an-image", f"{name}: not an image (first bytes: {data[:12]!r})") from None
    except Exception as error:  # a header Pillow recognises but cannot parse
        raise UploadError(400, "corrupt", f"{name}: cannot be decoded: {error}") from None
    if width * height > max_pixels:
        raise UploadError(
            413,
            "decompression-bomb",
            f"{name}: {width} x {height} = {width * height / 1e6:.0f} MP, over the {limit} limit: "
            "too large to decode safely (a decompression bomb?)",
        )
    try:
        return decode_image_bytes(data, name)
    except DataError as error:
        if "truncated" in str(error).lower():
            raise UploadError(400, "truncated", f"{name}: truncated image: {error}") from None
        raise UploadError(400, "corrupt", str(error)) from None
