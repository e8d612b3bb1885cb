"""Typed data passed between stages and written to reports (pydantic v2).

Everything a report holds is one of these models, so JSON output carries a schema version and
validates on the way back in (``Assessment.model_validate_json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)

from .errors import InputError, RecipeError
from .rois import ROI_KEYS

SCHEMA_VERSION = "1.0"

# --------------------------------------------------------------------------------------------
# Sex
_SEX_WORDS = {
    "m": "M", "male": "M", "boy": "M", "man": "M",
    "f": "F", "female": "F", "girl": "F", "woman": "F",
}


def parse_sex(value: object) -> str:
    """``'M'`` or ``'F'`` from M/F/male/female (any case); anything else is an ``InputError``."""
    if isinstance(value, str) and value.strip().lower() in _SEX_WORDS:
        return _SEX_WORDS[value.strip().lower()]
    raise InputError(f"bad sex {value!r}: use M or F (male/female)")


def _sex_validator(value: object) -> str:
    try:
        return parse_sex(value)
    except InputError as e:  # pydantic wants ValueError subclasses it can report per field
        raise ValueError(str(e)) from None


Sex = Annotated[Literal["M", "F"], BeforeValidator(_sex_validator)]
StandardName = Literal["rus-chn", "tw3"]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------------------------
# Flags and boxes
class Flag(Frozen):
    """Something a reader must know about a result: a machine code plus a sentence.

    ``stage`` names the pipeline stage that raised it, ``roi`` the ROI when it is about one.
    """

    code: str
    message: str
    stage: Literal["input", "segment", "detect", "grade", "score", "pipeline"] | None = None
    roi: str | None = None


class Box(Frozen):
    """Axis-aligned box in pixels, ``x0 <= x1``, ``y0 <= y1`` (x right, y down)."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def center(self) -> tuple[float, float]:
        return (0.5 * (self.x0 + self.x1), 0.5 * (self.y0 + self.y1))

    def shift(self, dx: float, dy: float) -> Box:
        return Box(x0=self.x0 + dx, y0=self.y0 + dy, x1=self.x1 + dx, y1=self.y1 + dy)

    def as_list(self) -> list[float]:
        return [self.x0, self.y0, self.x1, self.y1]

    @classmethod
    def from_xyxy(cls, xyxy: Any) -> Box:
        x0, y0, x1, y1 = (float(v) for v in xyxy)
        return cls(x0=x0, y0=y0, x1=x1, y1=y1)


# --------------------------------------------------------------------------------------------
# Stage 4 result
class ScoreResult(Frozen):
    """Stages + sex -> points, total maturity score and bone age (one standard)."""

    standard: str
    scorer: str
    sex: Literal["M", "F"]
    stages: dict[str, int]
    points: dict[str, int]
    maturity_score: int
    bone_age_years: float
    chronological_age_years: float | None = None
    bone_age_minus_chronological_years: float | None = None
    deviation_threshold_years: float | None = None
    deviation_beyond_threshold: bool | None = None
    flags: list[Flag] = Field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Whole-assessment report
class RoiResult(Frozen):
    """One ROI of one radiograph: where it is, its stage and what that stage is worth."""

    key: str
    name: str
    box: Box | None = None  # original image pixel coordinates
    detection_score: float | None = None
    stage: int | None = None
    stage_label: str | None = None
    confidence: float | None = None
    expected_stage: float | None = None
    probabilities: list[float] | None = None
    points: int | None = None
    flags: list[Flag] = Field(default_factory=list)


class ModelInfo(Frozen):
    """Which implementation and which weights produced a stage's output."""

    stage: str
    implementation: str
    name: str
    weights: str | None = None
    sha256: str | None = None
    phantom_trained: bool = False


class Assessment(Frozen):
    """Everything known about one radiograph after the pipeline ran."""

    schema_version: str = SCHEMA_VERSION
    id: str
    source: str | None = None
    #: ok: scored; rejected: the pipeline refused to guess (``reason`` says why);
    #: error: the input could not be processed (unreadable file, missing sex, ...)
    status: Literal["ok", "rejected", "error"] = "ok"
    sex: Literal["M", "F"] | None = None
    chronological_age_years: float | None = None
    standard: str | None = None
    bone_age_years: float | None = None
    maturity_score: int | None = None
    bone_age_minus_chronological_years: float | None = None
    deviation_threshold_years: float | None = None
    deviation_beyond_threshold: bool | None = None
    reason: str | None = None
    image_size: tuple[int, int] | None = None  # (height, width) of the original image
    crop_box: Box | None = None  # the hand crop, original pixel coordinates
    rois: list[RoiResult] = Field(default_factory=list)
    attention: list[list[float]] | None = None  # 13 x 13, rows = querying ROI, ROI_KEYS order
    flags: list[Flag] = Field(default_factory=list)
    timings_ms: dict[str, float] = Field(default_factory=dict)
    models: list[ModelInfo] = Field(default_factory=list)
    package_version: str | None = None

    @property
    def rejected(self) -> bool:
        return self.status == "rejected"

    def roi(self, key: str) -> RoiResult:
        for r in self.rois:
            if r.key == key:
                return r
        raise KeyError(key)


class BatchRow(Frozen):
    """One row of ``results.csv``."""

    id: str
    source: str
    status: Literal["ok", "rejected", "error"]
    message: str = ""
    sex: str | None = None
    chronological_age_years: float | None = None
    bone_age_years: float | None = None
    maturity_score: int | None = None
    standard: str | None = None
    bone_age_minus_chronological_years: float | None = None
    deviation_beyond_threshold: bool | None = None


# --------------------------------------------------------------------------------------------
# Recipes
class Recipe(BaseModel):
    """Base of every stage recipe: which registered implementation, with which settings.

    Unknown fields are errors (a typo never passes silently). Subclasses add their settings.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    stage: Literal["segment", "detect", "grade", "score"]
    implementation: str
    name: str = ""
    description: str = ""


R = TypeVar("R", bound=BaseModel)


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem: ``source: field.path: message``."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling against the recipe documentation)"
        lines.append(f"{source}: {loc}: {msg}")
    return "\n".join(lines)


def validate_recipe(model: type[R], data: dict[str, Any], source: str = "recipe") -> R:
    """Validate ``data`` as ``model``; a ``RecipeError`` naming each bad field otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise RecipeError(format_validation_error(e, source)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping of fields, got {type(data).__name__}")
    return data


def check_roi_mapping(values: dict[str, Any], what: str) -> None:
    """Every ROI key present, nothing else; an ``InputError`` naming the offenders."""
    missing = [k for k in ROI_KEYS if k not in values]
    unknown = [k for k in values if k not in ROI_KEYS]
    if unknown:
        raise InputError(
            f"unknown ROI key(s) in {what}: {', '.join(unknown)}; expected {', '.join(ROI_KEYS)}"
        )
    if missing:
        raise InputError(f"missing ROI key(s) in {what}: {', '.join(missing)}")
