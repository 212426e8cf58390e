"""The OpenAPI document (/docs) declares what every endpoint answers, and says what it really sends."""

from __future__ import annotations

import pytest

from tests.serve.conftest import image_files, upload

OPERATIONS = {
    ("post", "/v1/predict"): "application/json",
    ("post", "/v1/explain"): "image/png",
    ("get", "/v1/model"): "application/json",
    ("get", "/healthz"): "application/json",
    ("get", "/readyz"): "application/json",
    ("get", "/metrics"): "text/plain",
}


@pytest.fixture(scope="module")
def document(run_dir) -> dict:
    from resnexus.serve import create_app

    return create_app(run_dir).openapi()


def _component(document: dict, schema: dict) -> dict:
    """The component a ``{"$ref": "#/components/schemas/NAME"}`` names."""
    return document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]


def test_every_endpoint_declares_its_200_response(document):
    operations = {(method, path) for path, item in document["paths"].items() for method in item}
    assert operations == set(OPERATIONS)  # "/" (the web page) is not part of the API
    for (method, path), media_type in OPERATIONS.items():
        content = document["paths"][path][method]["responses"]["200"]["content"]
        assert list(content) == [media_type], path
        schema = content[media_type]["schema"]
        if media_type == "application/json":
            assert _component(document, schema)["properties"], path
        else:
            assert schema["type"] == "string", path


def test_predict_declares_its_response_fields(document):
    responses = document["paths"]["/v1/predict"]["post"]["responses"]
    body = _component(document, responses["200"]["content"]["application/json"]["schema"])
    fields = ["model", "calibrated", "coverage", "threshold", "predictions", "time_ms"]
    assert list(body["properties"]) == fields
    assert set(body["required"]) == set(fields)  # null, not absent, when the model has no calibration
    assert body["properties"]["time_ms"]["type"] == "number"
    assert body["properties"]["calibrated"]["type"] == "boolean"
    for nullable in ("coverage", "threshold"):
        assert body["properties"][nullable]["anyOf"] == [{"type": "number"}, {"type": "null"}], nullable
    prediction = _component(document, body["properties"]["predictions"]["items"])
    assert list(prediction["properties"]) == ["file", "label", "probabilities", "set"]
    assert prediction["properties"]["probabilities"]["additionalProperties"] == {"type": "number"}
    assert prediction["properties"]["set"]["anyOf"] == [
        {"type": "array", "items": {"type": "string"}},
        {"type": "null"},
    ]
    assert "cannot tell them apart" in prediction["properties"]["set"]["description"]
    (coverage,) = document["paths"]["/v1/predict"]["post"]["parameters"]
    assert (coverage["name"], coverage["in"], coverage["required"]) == ("coverage", "query", False)
    assert "a number above 0 and below 1" in coverage["description"]


def test_model_card_declares_the_estimate_and_the_calibration(document):
    info = _component(document, {"$ref": "#/components/schemas/ModelInfo"})
    cv = _component(document, info["properties"]["cv_accuracy"]["anyOf"][0])
    assert list(cv["properties"]) == ["mean", "std", "folds", "se", "ci"]
    calibration = _component(document, info["properties"]["calibration"]["anyOf"][0])
    assert list(calibration["properties"]) == [
        "temperature",
        "coverage",
        "images",
        "operating_point",
        "before",
        "after",
    ]
    point = _component(document, calibration["properties"]["operating_point"]["anyOf"][0])
    assert list(point["properties"]) == ["positive_class", "threshold", "target"]


def test_refusals_are_declared_as_json_errors(document):
    for (method, path), _ in OPERATIONS.items():
        responses = document["paths"][path][method]["responses"]
        assert "422" not in responses, path  # an invalid request is a 400 {"error": ...} here
        for status, response in responses.items():
            if status != "200":
                error = _component(document, response["content"]["application/json"]["schema"])
                assert list(error["properties"]) == ["error"], (path, status)
    assert {"4XX", "500", "503"} <= set(document["paths"]["/v1/predict"]["post"]["responses"])
    assert "501" in document["paths"]["/v1/explain"]["post"]["responses"]
    assert "503" in document["paths"]["/readyz"]["get"]["responses"]


@pytest.mark.parametrize("source", ["run_dir", "calibrated_cv_dir"])
def test_declared_fields_are_the_fields_sent(make_client, document, photos, source, request):
    """Each JSON response has exactly the declared fields, in the declared order."""
    client = make_client(request.getfixturevalue(source))
    sent = {
        "/v1/predict": client.post("/v1/predict", files=upload(*image_files(photos)[:2])),
        "/v1/model": client.get("/v1/model"),
        "/healthz": client.get("/healthz"),
        "/readyz": client.get("/readyz"),
    }
    for path, response in sent.items():
        assert response.status_code == 200, path
        method = "post" if path == "/v1/predict" else "get"
        schema = document["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        declared = _component(document, schema)
        assert list(response.json()) == list(declared["properties"]), path
    card = sent["/v1/model"].json()
    model_info = _component(document, {"$ref": "#/components/schemas/ModelInfo"})
    for field in ("preprocessing", "trained_on", "serving"):
        nested = _component(document, model_info["properties"][field])
        assert list(card[field]) == list(nested["properties"]), field
    prediction = _component(document, {"$ref": "#/components/schemas/Prediction"})
    assert list(sent["/v1/predict"].json()["predictions"][0]) == list(prediction["properties"])
    if source == "calibrated_cv_dir":
        for field in ("cv_accuracy", "calibration"):
            nested = _component(document, model_info["properties"][field]["anyOf"][0])
            assert list(card[field]) == list(nested["properties"]), field
