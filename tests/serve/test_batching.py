"""Dynamic batching: same results as batch-of-one, batches form under concurrency, shutdown drains."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from resnexus.serve.batching import Batcher, Unavailable
from tests.serve.conftest import hold_next_batch, image_files, upload


def _probabilities(client, files) -> list[list[float]]:
    body = client.post("/v1/predict", files=upload(*files)).json()
    return [list(p["probabilities"].values()) for p in body["predictions"]]


def test_batching_on_and_off_give_the_same_probabilities(make_client, photos):
    files = image_files(photos)
    batched = _probabilities(make_client(max_batch=16, max_wait_ms=20), files)
    single = _probabilities(make_client(batching=False), files)
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-6)


def test_concurrent_requests_are_answered_correctly_in_shared_batches(make_client, photos):
    files = image_files(photos)
    expected = dict(zip([name for name, _ in files], _probabilities(make_client(batching=False), files)))
    client = make_client(max_batch=16, max_wait_ms=50)
    requests = [files[i % len(files)] for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda item: client.post("/v1/predict", files=upload(item)), requests))
    assert [a.status_code for a in answers] == [200] * 16
    for (name, _), answer in zip(requests, answers):
        got = list(answer.json()["predictions"][0]["probabilities"].values())
        np.testing.assert_allclose(got, expected[name], rtol=0, atol=1e-6)
    samples = {
        (s.name, s.labels.get("le")): s.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for s in family.samples
    }
    assert samples[("resnexus_batch_size_sum", None)] == 16  # every image in exactly one batch
    assert samples[("resnexus_batch_size_bucket", "1.0")] < samples[("resnexus_batch_size_count", None)]  # a batch > 1


def test_health_answers_while_the_model_is_busy(make_client, photos):
    """Inference runs off the event loop: /healthz answers while a slow batch is computing."""
    client = make_client()
    batcher = client.app.state.server.batcher
    started, release = hold_next_batch(batcher)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(client.post, "/v1/predict", files=upload(image_files(photos)[0]))
        assert started.wait(10)
        t0 = time.perf_counter()
        assert client.get("/healthz").json() == {"status": "ok"}
        assert time.perf_counter() - t0 < 1.0
        release.set()
        assert pending.result(10).status_code == 200


def _echo(sizes: list[int]):
    def run(crops: torch.Tensor) -> np.ndarray:
        sizes.append(len(crops))
        return crops.float().flatten(1).numpy()

    return run


def test_batcher_gathers_up_to_max_batch_and_keeps_order():
    sizes: list[int] = []
    batcher = Batcher(_echo(sizes), max_batch=4, max_wait_ms=200)

    async def main() -> list[np.ndarray]:
        return await asyncio.gather(*(batcher.submit(torch.full((1, 1, 1), i, dtype=torch.uint8)) for i in range(10)))

    rows = asyncio.run(main())
    batcher.close()
    assert [float(r[0]) for r in rows] == list(range(10))
    assert sizes == [4, 4, 2]


def test_batcher_close_answers_queued_images_then_refuses_new_ones():
    sizes: list[int] = []
    batcher = Batcher(_echo(sizes), max_batch=2, max_wait_ms=0)

    async def main() -> list[np.ndarray]:
        pending = [asyncio.ensure_future(batcher.submit(torch.full((1,), i, dtype=torch.uint8))) for i in range(5)]
        await asyncio.sleep(0)  # all five queued
        await asyncio.get_running_loop().run_in_executor(None, batcher.close)
        return await asyncio.gather(*pending)

    rows = asyncio.run(main())
    assert [float(r[0]) for r in rows] == [0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError, match="the server is shutting down"):
        asyncio.run(batcher.submit(torch.zeros(1, dtype=torch.uint8)))


def test_a_failing_batch_fails_its_callers_and_the_worker_lives_on():
    calls = []

    def run(crops: torch.Tensor) -> np.ndarray:
        calls.append(len(crops))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return crops.float().numpy()

    batcher = Batcher(run, max_batch=1, max_wait_ms=0)
    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(batcher.submit(torch.zeros(1, dtype=torch.uint8)))
    assert asyncio.run(batcher.submit(torch.ones(1, dtype=torch.uint8))).tolist() == [1.0]
    batcher.close()


class _Fatal(BaseException):
    """What no ``except Exception`` catches (as SystemExit from a library): it ends the thread."""


@pytest.fixture
def live_client(live_server):
    """``live_client(**create_app kwargs)`` -> (httpx client, batcher) of a real server: a request
    that hangs fails the test with ``httpx.ReadTimeout`` after 10 s, and teardown does not wait on it."""
    import httpx

    clients: list[httpx.Client] = []

    def make(**kwargs):
        url, _, app = live_server(kwargs)
        clients.append(httpx.Client(base_url=url, timeout=10))
        return clients[-1], app.state.server.batcher

    yield make
    for client in clients:
        client.close()


def test_a_dead_batcher_makes_the_server_unready_and_refuses_at_once(live_client, photos):
    client, batcher = live_client()
    image = upload(image_files(photos)[0])

    def fatal(crops):
        raise _Fatal("the model library called exit")

    batcher.run = fatal
    first = client.post("/v1/predict", files=image)  # the request in the fatal batch
    stopped = "the batching thread stopped (_Fatal: the model library called exit): restart the server"
    assert (first.status_code, first.json()) == (503, {"error": f"service unavailable: {stopped}"})
    ready = client.get("/readyz")
    assert (ready.status_code, ready.json()) == (503, {"error": f"not ready: {stopped}"})
    t0 = time.perf_counter()
    later = client.post("/v1/predict", files=image)
    assert (later.status_code, later.json()) == (503, {"error": f"service unavailable: {stopped}"})
    assert time.perf_counter() - t0 < 2.0
    assert client.get("/healthz").status_code == 200  # the process still answers: an orchestrator restarts it
    counts = {
        s.labels.get("reason"): s.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for s in family.samples
        if s.name == "resnexus_errors_total"
    }
    assert counts["unavailable"] == 2


def test_an_error_forming_a_batch_fails_that_batch_and_the_server_keeps_serving(live_client, photos):
    """The issue's --max-wait-ms 1e15 (now refused up front) overflowed the queue's timeout and
    killed the thread; any such error now fails that batch only."""
    client, batcher = live_client(max_batch=4)
    image = upload(image_files(photos)[0])
    batcher.max_wait = 1e12  # seconds: queue.get(timeout=1e12) raises OverflowError
    failed = client.post("/v1/predict", files=image)
    assert failed.status_code == 500 and failed.json()["error"].startswith("internal error (OverflowError)")
    assert client.get("/readyz").status_code == 200
    batcher.max_wait = 0.005
    assert client.post("/v1/predict", files=image).status_code == 200


@pytest.mark.parametrize("fault", ["raises", "too-few-rows"])
def test_a_model_failing_on_one_batch_fails_those_requests_and_the_next_works(live_client, photos, fault):
    client, batcher = live_client(batching=False)
    run, calls = batcher.run, []

    def once_broken(crops):
        calls.append(len(crops))
        if len(calls) > 1:
            return run(crops)
        if fault == "raises":
            raise RuntimeError("CUDA error: device-side assert")
        return run(crops)[:0]  # a model that returns no row for the batch

    batcher.run = once_broken
    image = upload(image_files(photos)[0])
    failed = client.post("/v1/predict", files=image)
    expected = {
        "raises": "internal error (RuntimeError): the server's log has the details",
        "too-few-rows": "internal error (RuntimeError): the server's log has the details",
    }[fault]
    assert (failed.status_code, failed.json()) == (500, {"error": expected})
    assert client.post("/v1/predict", files=image).status_code == 200
    assert client.get("/readyz").status_code == 200


def test_batcher_dies_cleanly_answering_queued_and_later_callers():
    release = threading.Event()

    def run(crops: torch.Tensor) -> np.ndarray:
        release.wait(10)
        raise _Fatal("gone")

    batcher = Batcher(run, max_batch=1, max_wait_ms=0)

    async def main() -> list:
        pending = [asyncio.ensure_future(batcher.submit(torch.zeros(1, dtype=torch.uint8))) for _ in range(3)]
        await asyncio.sleep(0.05)  # the first is in the batch, two queued behind it
        release.set()
        return await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 10)

    errors = asyncio.run(main())
    assert [type(e) for e in errors] == [Unavailable] * 3
    assert batcher.failure == "_Fatal: gone" and not batcher.alive
    with pytest.raises(Unavailable, match=r"^the batching thread stopped \(_Fatal: gone\): restart the server$"):
        asyncio.run(asyncio.wait_for(batcher.submit(torch.zeros(1, dtype=torch.uint8)), 5))
