"""Graceful shutdown: SIGTERM (uvicorn's should_exit) lets an in-flight request finish, then the
batcher drains and stops."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.serve.conftest import hold_next_batch, image_files, serve_process


def test_shutdown_finishes_the_request_in_flight(live_server, photos):
    url, server, app = live_server({})
    name, data = image_files(photos)[0]
    batcher = app.state.server.batcher  # started by the lifespan by now
    started, release = hold_next_batch(batcher)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.post, f"{url}/v1/predict", files=[("files", (name, data, "image/png"))], timeout=20)
        assert started.wait(10)
        server.should_exit = True  # what uvicorn's SIGTERM handler does
        time.sleep(0.3)
        assert not pending.done()  # still waiting for its batch, not cut off
        release.set()
        response = pending.result(20)
    assert response.status_code == 200
    assert response.json()["predictions"][0]["file"] == name
    deadline = time.monotonic() + 10
    while batcher._thread.is_alive():  # the lifespan's shutdown closed the batcher
        assert time.monotonic() < deadline, "the batcher did not stop"
        time.sleep(0.05)
    assert app.state.server.ready is False


def test_resnexus_serve_command_serves_and_stops_on_sigterm(run_dir, photos):
    """The real command end to end: it binds 127.0.0.1, answers, and shuts down cleanly on SIGTERM."""
    import signal

    with serve_process(run_dir) as (process, url):
        name, data = image_files(photos)[0]
        answer = httpx.post(f"{url}/v1/predict", files=[("files", (name, data, "image/png"))])
        assert answer.status_code == 200
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught (its exit status says SIGTERM)
        assert process.wait(30) == -signal.SIGTERM
        output = process.stdout.read()
        assert "Waiting for application shutdown." in output and "Application shutdown complete." in output
        assert f"Uvicorn running on {url}" in output
        assert "serving resnet20_cifar (bright, dark)" in output
