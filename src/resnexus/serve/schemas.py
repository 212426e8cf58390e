"""What each endpoint answers, as Pydantic models: FastAPI checks every response against them and
the OpenAPI page (``/docs``) documents them.

The field order is the order of the JSON keys, and a number stays as given (``5`` is not turned
into ``5.0``), so the responses are the same bytes as before these models existed.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, WithJsonSchema

# an int or a float, kept as it came (a float field would write 5 as 5.0); "number" in the schema
Number = Annotated[int | float, WithJsonSchema({"type": "number"})]


class ErrorResponse(BaseModel):
    """Every refusal and failure: a 4xx or 5xx status with the problem in words."""

    error: str = Field(description="what is wrong, naming the file or the limit")


class Prediction(BaseModel):
    file: str = Field(description="the uploaded file's name")
    label: str = Field(
        description="the predicted class: the most probable, or with an operating threshold the positive "
        "class once its probability reaches the threshold"
    )
    probabilities: dict[str, float] = Field(
        description="every class's probability, in the model's class order (calibrated when `calibrated`)"
    )
    set: list[str] | None = Field(
        description="the prediction set, in class order: the classes the model cannot rule out at `coverage`; "
        "two or more mean it cannot tell them apart. null when the model has no calibration"
    )


class PredictResponse(BaseModel):
    model: str
    calibrated: bool = Field(
        description="whether the probabilities are calibrated (temperature scaling fitted on the cross-validation's "
        "out-of-fold predictions); false: the model's raw probabilities"
    )
    coverage: float | None = Field(
        description="the share of prediction sets that hold the true class, for images like the training ones; "
        "null without a calibration"
    )
    threshold: float | None = Field(
        description="the operating threshold on the positive class's calibrated probability (the model card's "
        "`calibration.operating_point` names the class), or null: the most probable class wins"
    )
    predictions: list[Prediction] = Field(description="one per uploaded file, in upload order")
    time_ms: float = Field(description="time to read, decode and classify the images")


class Preprocessing(BaseModel):
    image_size: int = Field(description="the side of the square crop the model sees, in pixels")
    mean: list[Number]
    std: list[Number]
    crop_fraction: Number = Field(description="the centre crop's side as a fraction of the resized image")


class TrainedOn(BaseModel):
    data: str | None = Field(description="the training data's folder or file name (no path)")
    images: dict[str, int] | None = Field(description="images per split")
    which: str | None = Field(description="the split the model was trained on")


class CvAccuracy(BaseModel):
    mean: Number
    std: Number | None = Field(description="the sample standard deviation over the folds")
    folds: int | None
    se: float | None = Field(description="the standard error of the mean: std / sqrt(folds)")
    ci: list[Number] | None = Field(description="its 95 % interval [low, high], when cv_metrics.json has one")


class OperatingPoint(BaseModel):
    positive_class: str
    threshold: float = Field(description="the positive class is predicted from this calibrated probability on")
    target: dict[str, float] = Field(description='what it was chosen for, e.g. {"sensitivity": 0.95}')


class CalibrationCard(BaseModel):
    """What cross-validation learned about trusting the model, fitted on its out-of-fold predictions."""

    temperature: float = Field(description="the log-probabilities are divided by it (above 1: softened)")
    coverage: float = Field(description="the prediction sets' coverage when a request asks for none")
    images: int = Field(description="out-of-fold predictions the calibration was fitted on")
    operating_point: OperatingPoint | None
    before: dict[str, float] = Field(description="ECE, Brier score and NLL of the raw out-of-fold probabilities")
    after: dict[str, float] = Field(description="... and after temperature scaling")


class ModelCard(BaseModel):
    """The model and where it came from; no server path appears in it."""

    model: str
    classes: list[str]
    preprocessing: Preprocessing
    checkpoint: str = Field(description="the checkpoint's file name")
    sha256: str = Field(description="the checkpoint file's SHA-256")
    runtime: Literal["pytorch", "onnxruntime"]
    trained_on: TrainedOn
    metrics: dict[str, Any] | None = Field(description="the run's test metrics (metrics.json), if known")
    cv_accuracy: CvAccuracy | None = Field(description="cross-validated accuracy, for a cross-validation run")
    calibration: CalibrationCard | None = Field(
        description="the calibration the server applies; null: raw probabilities (none in the run, or --no-calibration)"
    )
    notice: str


class Serving(BaseModel):
    max_batch: int
    max_wait_ms: Number
    batching: bool
    max_file_bytes: int
    max_files: int
    max_pixels: int


class ModelInfo(ModelCard):
    """``GET /v1/model``: the model card and how the server runs it."""

    serving: Serving


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
    model: str


_WHY = {
    "4XX": "refused: a bad request, a file over a limit, not an image, ...",
    500: "an internal error (its details are in the server's log only)",
    501: "Grad-CAM needs a PyTorch model",
    503: "not ready, shutting down, or the batching thread stopped",
}


def error_responses(*statuses: int | str) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route that may answer ``statuses`` (and any 4xx) with an
    :class:`ErrorResponse` (the "4XX" entry also replaces FastAPI's 422, which this server never sends:
    an invalid request is a 400)."""
    return {status: {"model": ErrorResponse, "description": _WHY[status]} for status in ("4XX", *statuses)}


PNG_RESPONSE = {200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}}
PROMETHEUS_RESPONSE = {200: {"content": {"text/plain": {"schema": {"type": "string"}}}}}
