"""Property test of the server: random uploads (valid, truncated, header-lying, not images) never end
the `resnexus serve` process and never leave it unready (a short PNG used to segfault it)."""

from __future__ import annotations

import random
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from tests.data.images import PNG_KINDS, encode, lying_size, short_png
from tests.serve.conftest import serve_process

REQUESTS = 30  # bounded: each request holds 1-3 files


def _valid(rng: random.Random) -> bytes:
    size = (rng.randint(1, 40), rng.randint(1, 40))
    pixels = np.random.default_rng(rng.randrange(1 << 30)).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
    mode = rng.choice(["RGB", "L", "RGBA", "P"])
    fmt = rng.choice(["PNG", "JPEG", "WEBP", "GIF"])
    image = Image.fromarray(pixels).convert(mode)
    if fmt == "JPEG" and mode in ("RGBA", "P"):
        image = image.convert("RGB")
    return encode(image, fmt)


def _upload(rng: random.Random) -> tuple[str, bytes, bool | None]:
    """(file name, bytes, whether it is a valid image: None when either answer is right) of one random kind."""
    kind = rng.choice(["valid", "truncated", "short-png", "lying-size", "not-an-image", "empty"])
    if kind == "valid":
        return "valid.img", _valid(rng), True
    if kind == "truncated":
        data = _valid(rng)
        return "truncated.img", data[: rng.randint(1, len(data) - 1)], False
    if kind == "short-png":
        side = rng.choice([1, 8, 48, 300])
        return "short.png", short_png(side, side, rng.choice(list(PNG_KINDS)), rng.randint(0, 200)), False
    if kind == "lying-size":
        data = encode(Image.new("RGB", (16, 16), "red"), rng.choice(["JPEG", "GIF"]))
        width, height = rng.choice([4096, 60000]), rng.choice([4096, 60000])
        # within the 100 MP limit the decoders fill the missing rows (JPEG) or the canvas (GIF): either answer
        return "lying.img", lying_size(data, width, height), None if width * height <= 100_000_000 else False
    if kind == "not-an-image":
        return "noise.bin", rng.randbytes(rng.randint(1, 300)), False
    return "empty.png", b"", False


def test_random_uploads_never_end_or_unready_the_server(run_dir: Path):
    rng = random.Random(20260605)
    with serve_process(run_dir) as (process, url), httpx.Client(base_url=url, timeout=60) as client:
        for n in range(REQUESTS):
            uploads = [_upload(rng) for _ in range(rng.randint(1, 3))]
            files = [
                ("files", (f"{i}-{name}", data, "application/octet-stream"))
                for i, (name, data, _) in enumerate(uploads)
            ]
            response = client.post("/v1/predict", files=files)
            assert process.poll() is None, f"request {n} ({[u[0] for u in uploads]}) ended the server"
            if response.status_code == 200:  # every file decoded
                assert all(valid is not False for _, _, valid in uploads), response.text
                assert len(response.json()["predictions"]) == len(uploads)
            elif all(valid for _, _, valid in uploads):
                assert response.status_code == 200, response.text
                assert len(response.json()["predictions"]) == len(uploads)
            else:  # refused with a reason naming a bad file, never a server error
                assert response.status_code in (400, 413, 415), response.text
                bad = [f"{i}-{name}" for i, (name, _, valid) in enumerate(uploads) if valid is not True]
                assert any(name in response.json()["error"] for name in bad), response.text
            assert client.get("/readyz").status_code == 200, f"unready after request {n}"
