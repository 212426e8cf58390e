"""A calibrated model's served predictions: calibrated probabilities, the operating threshold and
prediction sets, each equal to ``judge()`` of the model's raw probabilities computed here without
the server; a model without calibration says so and serves what it always served."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from resnexus.engine.rundir import RunDir
from resnexus.reports.uncertainty import Calibration, judge
from tests.serve.conftest import image_files, raw_probabilities, upload

NAMES = ["bright", "dark"]


def _expected(cv_dir: Path, files: list[tuple[str, bytes]], coverage: float | None):
    calibration = Calibration.load(RunDir(cv_dir).calibration)
    raw = raw_probabilities(cv_dir, [Path(name) for name, _ in files])
    return raw, calibration, judge(raw, calibration, coverage)


def _sets(judged) -> list[list[str]]:
    return [[n for n, inside in zip(NAMES, row) if inside] for row in judged.sets]


def _assert_served_as_judged(body: dict, judged) -> None:
    predictions = body["predictions"]
    served = np.array([list(p["probabilities"].values()) for p in predictions])
    np.testing.assert_allclose(served, judged.probs, rtol=0, atol=1e-6)
    assert [p["label"] for p in predictions] == [NAMES[i] for i in judged.labels]
    assert [p["set"] for p in predictions] == _sets(judged)
    assert all(p["label"] in p["set"] for p in predictions)  # the threshold's choice is never outside its set


def test_calibrated_predictions_are_judge_of_the_raw_probabilities(make_client, calibrated_cv_dir, photos):
    files = image_files(photos)
    raw, calibration, judged = _expected(calibrated_cv_dir, files, 0.9)
    assert not np.allclose(raw, judged.probs, atol=1e-3)  # the temperature changes them
    response = make_client(calibrated_cv_dir).post("/v1/predict", files=upload(*files))
    assert response.status_code == 200
    body = response.json()
    assert list(body) == ["model", "calibrated", "coverage", "threshold", "predictions", "time_ms"]
    assert body["calibrated"] is True and body["coverage"] == 0.9
    assert body["threshold"] == calibration.threshold and calibration.threshold is not None
    _assert_served_as_judged(body, judged)
    dark = judged.probs[:, 1] >= calibration.threshold  # the threshold, not the top class, decides
    assert [p["label"] for p in body["predictions"]] == [NAMES[int(d)] for d in dark]


def test_a_request_may_ask_for_another_coverage(make_client, unsure_cv_dir, photos):
    """6 out-of-fold images are too few for a finite 90 % threshold (9 are needed): every set holds
    both classes; at 50 % the threshold is the 4th smallest score and the sets narrow."""
    files = image_files(photos)
    client = make_client(unsure_cv_dir)
    wide = client.post("/v1/predict", files=upload(*files)).json()
    assert [p["set"] for p in wide["predictions"]] == [NAMES] * len(files)
    _, _, judged = _expected(unsure_cv_dir, files, 0.5)
    narrow = client.post("/v1/predict?coverage=0.5", files=upload(*files)).json()
    assert narrow["coverage"] == 0.5
    _assert_served_as_judged(narrow, judged)
    assert sum(len(s) for s in _sets(judged)) < 2 * len(files)


def test_the_server_coverage_option_is_served_and_shown(make_client, calibrated_cv_dir, photos):
    files = image_files(photos)
    client = make_client(calibrated_cv_dir, coverage=0.75)
    body = client.post("/v1/predict", files=upload(*files)).json()
    assert body["coverage"] == 0.75
    _assert_served_as_judged(body, _expected(calibrated_cv_dir, files, 0.75)[2])
    assert client.get("/v1/model").json()["calibration"]["coverage"] == 0.75


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.1", "nan", "inf"])
def test_a_coverage_out_of_range_is_refused_naming_it(make_client, calibrated_cv_dir, photos, value):
    response = make_client(calibrated_cv_dir).post(f"/v1/predict?coverage={value}", files=upload(*image_files(photos)))
    assert response.status_code == 400
    assert response.json() == {"error": f"coverage must be a number above 0 and below 1, got {float(value)!r}"}


def test_a_model_without_calibration_says_so(make_client, run_dir, photos):
    files = image_files(photos)
    raw = raw_probabilities(run_dir, [Path(name) for name, _ in files])
    client = make_client()
    body = client.post("/v1/predict", files=upload(*files)).json()
    assert (body["calibrated"], body["coverage"], body["threshold"]) == (False, None, None)
    assert [p["set"] for p in body["predictions"]] == [None] * len(files)
    assert [p["label"] for p in body["predictions"]] == [NAMES[i] for i in raw.argmax(1)]
    served = np.array([list(p["probabilities"].values()) for p in body["predictions"]])
    np.testing.assert_allclose(served, raw, rtol=0, atol=1e-6)
    assert client.get("/v1/model").json()["calibration"] is None
    refused = client.post("/v1/predict?coverage=0.9", files=upload(*files))
    assert refused.status_code == 400
    assert refused.json()["error"].startswith(
        "coverage needs a calibrated model: this server's model has no calibration"
    )


def test_coverage_for_a_model_without_calibration_is_refused_at_start(run_dir):
    from resnexus.serve import create_app

    with pytest.raises(ValueError, match=r"^--coverage needs a calibrated model: .*best\.pt has no calibration"):
        create_app(run_dir, coverage=0.9)


def test_no_calibration_serves_the_raw_probabilities(make_client, calibrated_cv_dir, photos):
    files = image_files(photos)
    raw = raw_probabilities(calibrated_cv_dir, [Path(name) for name, _ in files])
    client = make_client(calibrated_cv_dir, calibrated=False)
    body = client.post("/v1/predict", files=upload(*files)).json()
    assert (body["calibrated"], body["coverage"], body["threshold"]) == (False, None, None)
    served = np.array([list(p["probabilities"].values()) for p in body["predictions"]])
    np.testing.assert_allclose(served, raw, rtol=0, atol=1e-6)
    assert client.get("/v1/model").json()["calibration"] is None


def test_batching_on_and_off_give_the_same_calibrated_answers(make_client, calibrated_cv_dir, photos):
    files = image_files(photos)
    answers = [
        make_client(calibrated_cv_dir, **options).post("/v1/predict", files=upload(*files)).json()["predictions"]
        for options in ({"max_batch": 16, "max_wait_ms": 20}, {"batching": False})
    ]
    batched, single = answers
    assert [(p["label"], p["set"]) for p in batched] == [(p["label"], p["set"]) for p in single]
    np.testing.assert_allclose(
        [list(p["probabilities"].values()) for p in batched],
        [list(p["probabilities"].values()) for p in single],
        rtol=0,
        atol=1e-6,
    )


def test_model_card_shows_the_estimate_its_interval_and_the_calibration(make_client, calibrated_cv_dir, unsure_cv_dir):
    calibration = Calibration.load(RunDir(calibrated_cv_dir).calibration)
    card = make_client(calibrated_cv_dir).get("/v1/model").json()
    assert card["cv_accuracy"] == {"mean": 0.62, "std": 0.08, "folds": 4, "se": pytest.approx(0.04), "ci": None}
    assert card["calibration"] == {
        "temperature": calibration.temperature,
        "coverage": 0.9,
        "images": 12,
        "operating_point": {
            "positive_class": "dark",
            "threshold": calibration.threshold,
            "target": {"sensitivity": 1.0},
        },
        "before": calibration.before,
        "after": calibration.after,
    }
    assert not math.isclose(calibration.temperature, 1.0)
    with_ci = make_client(unsure_cv_dir).get("/v1/model").json()["cv_accuracy"]
    assert with_ci["ci"] == [0.52, 0.71] and with_ci["se"] == pytest.approx(0.04)


def test_explain_names_the_served_class_and_calibrated_probability(make_client, calibrated_cv_dir, photos):
    files = image_files(photos)
    client = make_client(calibrated_cv_dir)
    served = client.post("/v1/predict", files=upload(*files)).json()["predictions"]
    for (name, data), prediction in zip(files[:3], served):
        response = client.post("/v1/explain", files=upload((name, data)))
        assert response.headers["x-predicted-class"] == prediction["label"]
        assert response.headers["x-explained-class"] == prediction["label"]
        assert float(response.headers["x-probability"]) == pytest.approx(
            prediction["probabilities"][prediction["label"]], abs=1e-6
        )
