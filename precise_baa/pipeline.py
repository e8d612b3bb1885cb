"""The four stages as one object: radiograph in, :class:`~precise_baa.schemas.Assessment` out.

>>> pipe = Pipeline.from_recipe("stages/pipelines/default.yaml")             # doctest: +SKIP
>>> a = pipe.assess("examples/phantom_000.png", sex="F", chronological_age=9)  # doctest: +SKIP
>>> a.bone_age_years, a.roi("radius").stage                              # doctest: +SKIP

A pipeline recipe names one recipe and/or weights folder per stage; any stage is swapped by
editing one line, or with ``overrides={"detect": "stages/detect/faster-rcnn-r50.py"}`` (a recipe
file builds fresh weights; a weights folder brings its own recipe).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

from . import __version__
from .errors import InputError, RecipeError
from .imaging import Radiograph, as_radiograph
from .interfaces import Detections, Grades, SegmentResult
from .paths import resolve
from .rois import ROI_BY_KEY, ROI_KEYS, stage_label
from .schemas import Assessment, Flag, ModelInfo, RoiResult, parse_sex, read_yaml, validate_recipe
from .weights import PHANTOM_NOTICE, UNVERIFIED_NOTICE

STAGE_ORDER = ("segment", "detect", "grade", "score")
#: the stages with models, run in this order by :meth:`Pipeline.run_stage`
LEARNED_STAGES = ("segment", "detect", "grade")
#: flag code of a right hand (DICOM laterality R) read mirrored and assessed as a left hand
MIRRORED = "right_hand_mirrored"
MIRRORED_NOTICE = ("right hand (DICOM laterality R): mirrored and assessed as a left hand, as the "
                   "standards are defined; boxes are in the mirrored image")
#: flag code of a hand the detector found only in the mirrored radiograph (thumb on the left)
MIRRORED_BY_DETECTION = "hand_mirrored"
MIRRORED_BY_DETECTION_NOTICE = (
    "thumb on the left (a right hand, or a left hand imaged from the other side): ROIs were "
    "missing as read and found in the mirrored radiograph, which was assessed as a left hand; "
    "boxes are in the mirrored image")


class StageRef(BaseModel):
    """One stage of a pipeline: a recipe (fresh weights) and/or a trained weights folder.

    ``runtime`` (optional) sets the stage recipe's ``runtime`` field: ``onnxruntime`` runs the
    weights folder's exported network (``precise-baa export``); unset, the recipe decides.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    recipe: str | None = None
    weights: str | None = None
    runtime: Literal["torch", "onnxruntime"] | None = None

    @model_validator(mode="after")
    def _one_of(self):
        if not self.recipe and not self.weights:
            raise ValueError("give `recipe`, `weights`, or both")
        return self


@dataclass
class Work:
    """One radiograph on its way through the stages: what :meth:`Pipeline.run_stage` reads and
    adds to (picklable, so per-stage workers in other processes can pass it on)."""

    id: str
    rad: Radiograph
    sex: str = ""
    age: float | None = None
    #: refused before the stages (no sex, impossible age)
    error: str | None = None
    seg: SegmentResult | None = None
    det: Detections | None = None
    grades: Grades | None = None
    #: ms per radiograph of each stage's batch
    timings: dict[str, float] = field(default_factory=dict)
    #: set by an engine when a stage raised on this radiograph: no later stage runs on it
    failed: str | None = None


class RejectPolicy(BaseModel):
    """When the pipeline refuses to report an age rather than guess (autorejection)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: a missing or implausible ROI rejects the radiograph before grading (the tables need all
    #: 13 stages for a bone age); false: the ROIs found are still graded and reported, and the
    #: radiograph is still rejected without a bone age (a partial report, never a guess)
    reject_on_missing_roi: bool = True
    #: flag an ROI whose top stage probability is below this
    low_confidence: float = 0.35
    #: reject when more than this many ROIs are low-confidence
    max_low_confidence_rois: int = 13
    #: when ROIs are missing, detect again on the mirrored hand crop and assess the mirrored
    #: radiograph when that finds more ROIs and shows the standards' view (thumb on the right:
    #: as read it was on the left, a right hand or a left hand imaged from the other side);
    #: flagged. Not for radiographs a DICOM laterality already mirrored
    retry_mirrored: bool = True


class PipelineRecipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = "pipeline"
    description: str = ""
    segment: StageRef
    detect: StageRef
    grade: StageRef
    score: StageRef
    reject: RejectPolicy = RejectPolicy()


def stage_ref(value: str | Mapping[str, Any] | StageRef) -> StageRef:
    """A CLI/override value -> StageRef: a folder with recipe.json is weights, else a recipe."""
    if isinstance(value, StageRef):
        return value
    if isinstance(value, Mapping):
        return StageRef(**value)
    p = resolve(value)
    if p.is_dir():
        if not (p / "recipe.json").is_file():
            raise RecipeError(f"{value}: a folder, but not a weights folder (no recipe.json)")
        return StageRef(weights=str(value))
    return StageRef(recipe=str(value))


@dataclass
class _Stage:
    name: str
    obj: Any
    info: ModelInfo


def _model_info(stage: str, obj: Any, ref: StageRef | None, base: Path | None = None) -> ModelInfo:
    """The stage's ModelInfo. Built-in stages record their weights themselves
    (:func:`precise_baa.weights.restore`); for others it is completed from the weights card."""
    from .weights import read_card

    info = getattr(obj, "info", None)
    if not isinstance(info, ModelInfo):
        recipe = getattr(obj, "recipe", None)
        info = ModelInfo(
            stage=stage,
            implementation=getattr(obj, "implementation", getattr(recipe, "implementation", "?")),
            name=getattr(obj, "name", None) or getattr(recipe, "name", "") or stage,
        )
    if ref is not None and ref.weights and not info.sha256:
        card = read_card(resolve(ref.weights, base))
        info = info.model_copy(update={
            "weights": ref.weights,
            "sha256": card.get("sha256") or info.sha256,
            "phantom_trained": bool(card.get("phantom_trained", info.phantom_trained)),
        })
    return info


class Pipeline:
    """segment -> detect -> grade -> score, batched, with every step's output kept."""

    def __init__(self, stages: Mapping[str, Any], recipe: PipelineRecipe | None = None,
                 refs: Mapping[str, StageRef] | None = None, device: str = "cpu",
                 precision: Literal["fp32", "fp16", "bf16"] = "fp32", base: Path | None = None):
        missing = [s for s in STAGE_ORDER if s not in stages]
        if missing:
            raise RecipeError(f"pipeline lacks stage(s): {', '.join(missing)}")
        refs = refs or {}
        self.stages = {
            s: _Stage(s, stages[s], _model_info(s, stages[s], refs.get(s), base))
            for s in STAGE_ORDER
        }
        self.recipe = recipe
        self.policy = recipe.reject if recipe else RejectPolicy()
        self.device = device
        self.precision = precision
        self.phantom_trained = any(st.info.phantom_trained for st in self.stages.values())
        #: stages whose weights loaded without a card to check them (allow_unverified)
        self.unverified = [s for s, st in self.stages.items() if st.info.weights and not st.info.sha256]
        grade_std = getattr(self.stages["grade"].obj, "standard", None)
        if grade_std is not None and grade_std != self.standard:
            raise RecipeError(
                f"the grade stage predicts {grade_std} stages but the score stage expects {self.standard}: "
                f"use a {self.standard} grader (grade recipe `standard: {self.standard}`) or a "
                f"{grade_std} scorer (stages/score/{grade_std}.yaml)")

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_recipe(
        cls,
        recipe: str | Path | Mapping[str, Any] | PipelineRecipe,
        *,
        overrides: Mapping[str, str | Mapping[str, Any] | StageRef | None] | None = None,
        device: str | None = None,
        precision: Literal["fp32", "fp16", "bf16"] = "fp32",
        trust: bool = False,
        allow_unverified: bool = False,
        load: Collection[str] | None = None,
    ) -> Pipeline:
        """Build from a pipeline recipe (YAML path or mapping); ``overrides`` swap stages.

        ``trust``: run ``.py`` recipes from outside ``stages/`` (they are code).
        ``allow_unverified``: load weights folders without a card (results are flagged).
        ``load``: the stages to build (default all); the others stay unbuilt (``None``), for a
        worker that runs one stage (:meth:`run_stage`) and never assembles an Assessment."""
        from .registry import load_stage
        from .training import pick_device

        source = "pipeline recipe"
        base: Path | None = None
        if isinstance(recipe, (str, Path)):
            path = resolve(recipe)
            source, base = str(path), path.parent
            recipe = read_yaml(path)
        if not isinstance(recipe, PipelineRecipe):
            recipe = validate_recipe(PipelineRecipe, dict(recipe), source)
        refs = {s: getattr(recipe, s) for s in STAGE_ORDER}
        for stage, value in (overrides or {}).items():
            if stage not in refs:
                raise RecipeError(f"unknown stage {stage!r} in overrides; expected {STAGE_ORDER}")
            if value is not None:
                refs[stage] = stage_ref(value)
        device = pick_device(device)
        stages = {}
        for stage, ref in refs.items():
            if load is not None and stage not in load:
                stages[stage] = None
                continue
            r = str(resolve(ref.recipe, base)) if ref.recipe else None
            w = str(resolve(ref.weights, base)) if ref.weights else None
            if ref.runtime is not None:  # the stage's recipe with its runtime field set
                from .runtime import with_runtime

                r = with_runtime(stage, r, w, ref.runtime)
            stages[stage] = load_stage(stage, recipe=r, weights=w, device=device, trust=trust,
                                       allow_unverified=allow_unverified)
        return cls(stages, recipe, refs, device=device, precision=precision, base=base)

    @property
    def standard(self) -> str:
        return self.stages["score"].obj.standard

    @property
    def models(self) -> list[ModelInfo]:
        return [st.info for st in self.stages.values()]

    def _autocast(self):
        if self.device.startswith("cuda") and self.precision in ("fp16", "bf16"):
            import torch

            dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
            return torch.autocast("cuda", dtype=dtype)
        return contextlib.nullcontext()

    # ---------------------------------------------------------------- running
    def assess(
        self,
        image: str | Path | np.ndarray | Radiograph,
        sex: str | None = None,
        chronological_age: float | None = None,
        id: str | None = None,
    ) -> Assessment:
        """Assess one radiograph; sex and age default to what a DICOM file states."""
        rad = as_radiograph(image)
        if id is None:
            id = Path(rad.meta.source).stem if rad.meta.source else "image"
        return self.assess_batch([rad], [sex], [chronological_age], [id])[0]

    def assess_batch(
        self,
        images: Sequence[Radiograph | np.ndarray],
        sexes: Sequence[str | None],
        ages: Sequence[float | None],
        ids: Sequence[str],
        details: list[dict[str, Any]] | None = None,
    ) -> list[Assessment]:
        """Assess many radiographs, each stage batched over all of them.

        Pass a list as ``details`` to receive, per image, the raw stage outputs
        (``{"segment": SegmentResult, "detect": Detections, "grade": Grades}``, absent when the
        stage did not run), e.g. for evaluation.
        """
        works = self.begin(images, sexes, ages, ids)
        for stage in LEARNED_STAGES:
            self.run_stage(stage, works)
        if details is not None:
            details.extend(
                {k: v for k, v in (("segment", w.seg), ("detect", w.det), ("grade", w.grades))
                 if v is not None}
                for w in works)
        return self.finish(works)

    # The three steps of assess_batch, for engines that run the stages in different processes
    # (one pool of workers per stage): begin, run_stage for each learned stage, finish.
    def begin(self, images: Sequence[Radiograph | np.ndarray], sexes: Sequence[str | None],
              ages: Sequence[float | None], ids: Sequence[str]) -> list[Work]:
        """One :class:`Work` per radiograph; a missing sex or an impossible age is refused here
        (the work's ``error``), before any stage runs."""
        n = len(images)
        if not (len(sexes) == len(ages) == len(ids) == n):
            raise ValueError("images, sexes, ages and ids must have the same length")
        works = []
        for image, sex, age, id in zip(images, sexes, ages, ids, strict=True):
            w = Work(id=id, rad=as_radiograph(image))
            try:
                sex = sex or w.rad.meta.sex
                if not sex:
                    raise InputError("no sex given: the standards score boys and girls differently; "
                                     "add it to the metadata CSV (id,sex,chronological_age) or DICOM")
                w.sex = parse_sex(sex)
                age = age if age is not None else w.rad.meta.chronological_age_years
                if age is not None and not 0 <= float(age) <= 30:
                    raise InputError(f"chronological age {age} y outside 0..30 y")
                w.age = None if age is None else float(age)
            except InputError as e:
                w.error = str(e)
            works.append(w)
        return works

    def waiting(self, stage: str, works: Sequence[Work]) -> list[Work]:
        """The works ``stage`` has to run on: segment all not refused, detect the hands the
        segmenter kept, grade those with all 13 ROIs (or every detected hand when missing ROIs
        do not reject)."""
        if stage == "segment":
            return [w for w in works if w.error is None and w.seg is None]
        if stage == "detect":
            return [w for w in works if w.seg is not None and not w.seg.rejected and w.det is None]
        if stage == "grade":
            return [w for w in works if w.det is not None and w.grades is None
                    and not (self.policy.reject_on_missing_roi and w.det.missing)]
        raise ValueError(f"unknown learned stage {stage!r}; expected {LEARNED_STAGES}")

    def run_stage(self, stage: str, works: Sequence[Work]) -> None:
        """Run one learned stage, batched, on the works waiting for it; keeps its output and
        its time per radiograph on each work."""
        import torch

        todo = self.waiting(stage, [w for w in works if w.failed is None])
        if not todo:
            return
        obj = self.stages[stage].obj
        t0 = time.perf_counter()
        with torch.inference_mode(), self._autocast():
            if stage == "segment":
                res = obj.segment([w.rad.pixels for w in todo])
            elif stage == "detect":
                res = obj.detect([w.seg.image for w in todo])
                if self.policy.retry_mirrored:
                    res = self._retry_mirrored(obj, todo, res)
            else:
                res = obj.grade([w.seg.image for w in todo], [w.det.boxes for w in todo],
                                [w.sex for w in todo])
        per = round(1000.0 * (time.perf_counter() - t0) / len(todo), 2)
        field_name = {"segment": "seg", "detect": "det", "grade": "grades"}[stage]
        for w, r in zip(todo, res, strict=True):
            setattr(w, field_name, r)
            w.timings[stage] = per

    @staticmethod
    def _retry_mirrored(detector: Any, works: Sequence[Work], res: list[Detections]) -> list[Detections]:
        """Detect again, mirrored, where ROIs are missing; a work whose mirrored hand has fewer
        missing ROIs and shows the standards' view (thumb on the right: it was on the left as
        read) becomes the mirrored radiograph (pixels, mask, crop) with those boxes."""
        from .detect.anatomy import thumb_on_the_right

        again = [i for i, (w, r) in enumerate(zip(works, res, strict=True))
                 if r.missing and not w.rad.meta.mirrored]
        if not again:
            return res
        res = list(res)
        flipped = detector.detect([np.ascontiguousarray(works[i].seg.image[:, ::-1]) for i in again])
        for i, r in zip(again, flipped, strict=True):
            if len(r.missing) < len(res[i].missing) and thumb_on_the_right(r.boxes):
                works[i].rad, works[i].seg = mirrored(works[i].rad, works[i].seg)
                res[i] = r
        return res

    def finish(self, works: Sequence[Work]) -> list[Assessment]:
        """Score and assemble each work's :class:`Assessment`."""
        return [self._error(w.id, w.rad, w.error) if w.error is not None else
                self._assemble(w.id, w.rad, w.sex, w.age, w.seg, w.det, w.grades, w.timings)
                for w in works]

    # ---------------------------------------------------------------- assembly
    def _base(self, id: str, rad: Radiograph) -> dict[str, Any]:
        flags = []
        if self.phantom_trained:
            flags.append(Flag(code="phantom_weights", message=PHANTOM_NOTICE, stage="pipeline"))
        for stage in self.unverified:
            flags.append(Flag(code="weights_unverified", stage=stage,
                              message=f"{stage} stage: {UNVERIFIED_NOTICE}"))
        if rad.meta.mirrored and rad.meta.extra.get("mirrored_by") == "detect":
            flags.append(Flag(code=MIRRORED_BY_DETECTION, message=MIRRORED_BY_DETECTION_NOTICE,
                              stage="detect"))
        elif rad.meta.mirrored:
            flags.append(Flag(code=MIRRORED, message=MIRRORED_NOTICE, stage="input"))
        return dict(
            id=id, source=rad.meta.source, image_size=tuple(rad.pixels.shape),
            models=self.models, package_version=__version__, flags=flags,
        )

    def _error(self, id: str, rad: Radiograph, message: str) -> Assessment:
        base = self._base(id, rad)
        return Assessment(**base, status="error", reason=message)

    def _assemble(self, id, rad, sex, age, seg: SegmentResult, det: Detections | None,
                  grades: Grades | None, timings: dict[str, float]) -> Assessment:
        base = self._base(id, rad)
        flags: list[Flag] = list(base.pop("flags")) + list(seg.flags)
        common = dict(**base, sex=sex, chronological_age_years=age, standard=self.standard,
                      crop_box=seg.crop_box, timings_ms=dict(timings))
        if seg.rejected:
            return Assessment(**common, status="rejected", reason=seg.rejected, flags=flags)
        assert det is not None
        flags += det.flags
        dx, dy = seg.crop_box.x0, seg.crop_box.y0
        probs = grades.probabilities if grades else {}
        roi_flags: dict[str, list[Flag]] = {k: [] for k in ROI_KEYS}
        for f in det.flags + (grades.flags if grades else []):
            if f.roi in roi_flags:
                roi_flags[f.roi].append(f)
        if grades:
            for k, p in probs.items():
                if p is not None and float(np.max(p)) < self.policy.low_confidence:
                    f = Flag(code="low_confidence", roi=k, stage="grade",
                             message=f"{ROI_BY_KEY[k].name}: stage confidence {float(np.max(p)):.2f} "
                                     f"< {self.policy.low_confidence:.2f}; review this ROI")
                    roi_flags[k].append(f)
                    flags.append(f)
        score = None
        reason = None
        if det.missing:
            reason = "ROI(s) not found or implausible: " + ", ".join(det.missing)
            if grades is not None:
                reason += " (the ROIs found are graded; a bone age needs all 13)"
        elif grades is not None:
            low = sum(1 for k in ROI_KEYS if any(f.code == "low_confidence" for f in roi_flags[k]))
            if low > self.policy.max_low_confidence_rois:
                reason = f"{low} ROIs graded with low confidence (> {self.policy.max_low_confidence_rois})"
            else:
                t0 = time.perf_counter()
                score = self.stages["score"].obj.score(grades.stages, sex, age)
                timings["score"] = round(1000.0 * (time.perf_counter() - t0), 3)
                flags += score.flags
        rois = []
        for k in ROI_KEYS:
            box = det.boxes.get(k)
            p = probs.get(k)
            stage = int(np.argmax(p)) if p is not None else None
            rois.append(RoiResult(
                key=k, name=ROI_BY_KEY[k].name,
                box=box.shift(dx, dy) if box is not None else None,
                detection_score=det.scores.get(k),
                stage=stage,
                stage_label=stage_label(k, stage, self.standard) if stage is not None else None,
                confidence=float(np.max(p)) if p is not None else None,
                expected_stage=float(np.dot(np.arange(len(p)), p)) if p is not None else None,
                probabilities=[round(float(v), 5) for v in p] if p is not None else None,
                points=score.points[k] if score else None,
                flags=roi_flags[k],
            ))
        attention = None
        if grades is not None and grades.attention is not None:
            attention = np.round(np.asarray(grades.attention, dtype=float), 5).tolist()
        fields = dict(common, rois=rois, attention=attention, flags=flags, timings_ms=timings)
        if reason or score is None:
            return Assessment(**fields, status="rejected", reason=reason or "not scored")
        return Assessment(
            **fields, status="ok",
            bone_age_years=score.bone_age_years, maturity_score=score.maturity_score,
            bone_age_minus_chronological_years=score.bone_age_minus_chronological_years,
            deviation_threshold_years=score.deviation_threshold_years,
            deviation_beyond_threshold=score.deviation_beyond_threshold,
        )


def mirrored(rad: Radiograph, seg: SegmentResult) -> tuple[Radiograph, SegmentResult]:
    """``rad`` and its segmentation mirrored left-right (the crop box moves to the other side)."""
    from dataclasses import replace

    from .schemas import Box

    w = rad.pixels.shape[1]
    flip = lambda a: None if a is None else np.ascontiguousarray(a[:, ::-1])  # noqa: E731
    b = seg.crop_box
    meta = replace(rad.meta, mirrored=True, extra={**rad.meta.extra, "mirrored_by": "detect"})
    return (replace(rad, pixels=flip(rad.pixels), meta=meta),
            replace(seg, mask=flip(seg.mask), image=flip(seg.image), raw_mask=flip(seg.raw_mask),
                    crop_box=Box(x0=w - b.x1, y0=b.y0, x1=w - b.x0, y1=b.y1)))


def assessed_pixels(assessment: Assessment, pixels: np.ndarray) -> np.ndarray:
    """The pixels the assessment's boxes refer to: ``pixels`` as read, mirrored when the
    detector found the hand only mirrored (flag ``hand_mirrored``)."""
    if any(f.code == MIRRORED_BY_DETECTION for f in assessment.flags):
        return np.ascontiguousarray(pixels[:, ::-1])
    return pixels
