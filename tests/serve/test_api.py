"""Each endpoint's contract; served probabilities are predict's CSV's."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import resnexus
from tests.serve.conftest import image_files, upload


def _csv_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def test_served_probabilities_equal_predict_csv(make_client, run_dir, photos, tmp_path):
    files = image_files(photos)
    rows = _csv_rows(resnexus.predict(run_dir, photos, tmp_path / "preds.csv"))
    response = make_client().post("/v1/predict", files=upload(*files))
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "resnet20_cifar"
    assert body["time_ms"] > 0
    assert [p["file"] for p in body["predictions"]] == [name for name, _ in files]
    for prediction in body["predictions"]:
        row = rows[prediction["file"]]
        assert prediction["label"] == row["label"]
        assert list(prediction["probabilities"]) == ["bright", "dark"]
        for name, p in prediction["probabilities"].items():
            assert p == pytest.approx(float(row[f"prob_{name}"]), abs=1e-6)


def test_onnx_model_serves_predicts_probabilities(make_client, run_dir, photos, tmp_path):
    from resnexus.engine.export import export_onnx

    onnx = export_onnx(run_dir, tmp_path / "model.onnx").path
    rows = _csv_rows(resnexus.predict(onnx, photos, tmp_path / "preds.csv"))
    client = make_client(onnx)
    body = client.post("/v1/predict", files=upload(*image_files(photos))).json()
    for prediction in body["predictions"]:
        for name, p in prediction["probabilities"].items():
            assert p == pytest.approx(float(rows[prediction["file"]][f"prob_{name}"]), abs=1e-6)
    assert client.get("/v1/model").json()["runtime"] == "onnxruntime"
    refused = client.post("/v1/explain", files=upload(*image_files(photos)[:1]))
    assert refused.status_code == 501
    assert refused.json() == {"error": "Grad-CAM needs a PyTorch checkpoint; this server runs an ONNX model"}


def test_model_endpoint_describes_the_run(make_client, run_dir):
    best = run_dir / "checkpoints" / "best.pt"
    card = make_client().get("/v1/model").json()
    assert card["model"] == "resnet20_cifar"
    assert card["classes"] == ["bright", "dark"]
    assert card["preprocessing"] == {
        "image_size": 16,
        "mean": pytest.approx([0.4914, 0.4822, 0.4465]),
        "std": pytest.approx([0.247, 0.2435, 0.2616]),
        "crop_fraction": 0.875,
    }
    assert card["checkpoint"] == "best.pt"  # the file's name: the server's paths stay on the server
    assert card["sha256"] == hashlib.sha256(best.read_bytes()).hexdigest()
    assert card["metrics"] == json.loads((run_dir / "metrics.json").read_text())
    assert card["cv_accuracy"] is None
    assert card["trained_on"]["which"] == "train split"
    assert sum(card["trained_on"]["images"].values()) == 12
    assert card["notice"] == "not a diagnosis; for research use"
    assert card["serving"] == {
        "max_batch": 16,
        "max_wait_ms": 5.0,
        "batching": True,
        "max_file_bytes": 20 * 1024 * 1024,
        "max_files": 32,
        "max_pixels": 100_000_000,
    }


def test_cross_validation_directory_reports_its_estimate(make_client, cv_dir):
    card = make_client(cv_dir).get("/v1/model").json()
    assert card["checkpoint"] == "best.pt"
    se = pytest.approx(0.05 / 3**0.5)  # no interval in this cv_metrics.json: the standard error alone
    assert card["cv_accuracy"] == {"mean": 0.75, "std": 0.05, "folds": 3, "se": se, "ci": None}
    assert card["calibration"] is None  # no calibration.json beside it


def test_explain_returns_the_overlay_png(make_client, photos):
    name, data = image_files(photos)[0]
    client = make_client()
    predicted = client.post("/v1/predict", files=upload((name, data))).json()["predictions"][0]
    response = client.post("/v1/explain", files=upload((name, data)))
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-predicted-class"] == predicted["label"]
    assert float(response.headers["x-probability"]) == pytest.approx(
        predicted["probabilities"][predicted["label"]], abs=1e-6
    )
    overlay = np.asarray(Image.open(io.BytesIO(response.content)))
    assert overlay.shape == (256, 256, 3)  # the 16-px crop, enlarged for display
    assert overlay.std() > 1.0
    other = "bright" if predicted["label"] == "dark" else "dark"
    targeted = client.post(f"/v1/explain?target={other}", files=upload((name, data)))
    assert targeted.status_code == 200 and targeted.headers["x-explained-class"] == other
    unknown = client.post("/v1/explain?target=cat", files=upload((name, data)))
    assert unknown.status_code == 400
    assert unknown.json() == {"error": "target 'cat' is not one of the classes ['bright', 'dark']"}
    two = client.post("/v1/explain", files=upload((name, data), (name, data)))
    assert two.status_code == 400 and two.json() == {"error": "explain takes one image, got 2"}


def test_health_readiness_docs_and_page(make_client):
    client = make_client()
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "model": "resnet20_cifar"}
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and '<input id="file" type="file" accept="image/*" capture' in page.text
    for asset in ("app.js", "style.css"):
        assert client.get(f"/static/{asset}").status_code == 200
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}


def test_not_ready_outside_the_lifespan(run_dir):
    from fastapi.testclient import TestClient

    from resnexus.serve import create_app

    client = TestClient(create_app(run_dir))  # no `with`: startup never ran
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"error": "not ready: starting or shutting down"}


def test_cli_refuses_a_missing_checkpoint_in_one_line(capsys, run_dir):
    from resnexus.cli import main

    assert main(["serve", "--checkpoint", str(run_dir / "missing")]) == 2
    assert "resnexus serve: error: checkpoint not found" in capsys.readouterr().err


def test_model_card_names_no_server_path(make_client, run_dir, cv_dir, photos):
    """/v1/model, /readyz and the OpenAPI page say nothing about where the server keeps its files."""
    root = str(run_dir.parent.parent)  # pytest's tmp dir, above the run, the CV dir and the photos
    assert str(photos).startswith(root) and str(cv_dir).startswith(root)
    for source in (run_dir, cv_dir, run_dir / "checkpoints" / "best.pt"):
        client = make_client(source)
        card = client.get("/v1/model")
        assert card.status_code == 200
        assert card.json()["checkpoint"] == "best.pt"
        assert card.json()["trained_on"]["data"] == "photos"
        for path in ("/v1/model", "/readyz", "/openapi.json", "/"):
            body = client.get(path).text
            assert root not in body, path
