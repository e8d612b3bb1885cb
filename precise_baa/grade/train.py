"""Training a grader on a COCO manifest (``precise-baa train grade``).

The data (hand crops, jittered ROI crops, radiograph appearance randomisation) come from
:mod:`precise_baa.grade.dataset`. :func:`precise_baa.training.fit` runs the loop. What the
labels supervise (``supervision``):

- ``stages`` (default): class-weighted cross entropy per ROI head (weights from the training
  stage histogram, smoothed) plus an optional ordinal term, the distance of the expected stage
  from the true one; the checkpoint with the best validation mean exact accuracy is kept.
- ``bone-age``: only each image's bone age (and sex) is used. Stage 4 in torch
  (:class:`precise_baa.score.torch.DifferentiableScorer`) turns the 13 heads' probabilities
  into expected points, a maturity score and a bone age; the loss is Huber between that age and
  the label, plus two terms that keep the heads meaningful as stages (:func:`bone_age_loss`).
  The checkpoint with the lowest validation bone-age error (argmax stages scored by the table
  scorer, against the label), averaged over ``age_select_window`` epochs up to it, is kept.
- ``mixed``: the stage loss on images with stages, the bone-age loss on images with a bone
  age (those with stages too, but the hand prior only where there are no stages:
  ``hand_prior_on_staged``), in the same batches, each weighted by its images' share of the
  batch (``mixed_weighting``), the stage loss times ``mixed_stage_weight`` (6: a stage-labelled
  image teaches more than a bone age) and without class weights (``mixed_class_weights``);
  checkpoints as for ``bone-age``.

Images without boxes or masks can get them from trained stages (``boxes_from``: a detector;
``segment``: a segmenter, the bundled one by default), see :mod:`precise_baa.labels.predicted`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..data import ImageRecord, load_coco
from ..errors import InputError
from ..paths import display_path
from ..registry import parse_recipe, read_recipe
from ..rois import ROI_KEYS, stage_counts
from ..score import create_scorer, load_tables
from ..score.torch import SEXES, DifferentiableScorer
from ..training import (
    FitResult,
    fit,
    make_loaders,
    pick_device,
    run_on_main,
    seed_everything,
    setup_distributed,
    with_training_overrides,
)
from ..weights import PHANTOM_NOTICE
from .dataset import GradeDataset, usable_records
from .evaluate import grading_metrics
from .models import GraderOutput, build_model
from .predictor import RoiGrader, input_card
from .recipes import GradeRecipe

log = logging.getLogger(__name__)

INTENDED_USE = ("Stage 3 of precise-baa: maturity stage of each of the 13 RUS ROIs of a hand "
                "radiograph, from the segmenter's hand crop and the detector's ROI boxes. Research "
                "use; not a medical device.")


# --------------------------------------------------------------------------------------------
# Loss
def class_weights(records: Sequence[ImageRecord], standard: str, *, power: float = 0.5,
                  smoothing: float = 1.0) -> list[torch.Tensor]:
    """Per ROI: ``(count + smoothing) ** -power`` over its stages, mean 1 over training samples."""
    counts = stage_counts(standard)
    out = []
    for k in ROI_KEYS:
        hist = np.zeros(counts[k], dtype=np.float64)
        for r in records:
            s = r.stages_for(standard).get(k)
            if s is not None and k in r.boxes:
                hist[s] += 1
        w = (hist + smoothing) ** -power
        if hist.sum() > 0:
            w = w * hist.sum() / float((w * hist).sum())
        out.append(torch.tensor(w, dtype=torch.float32))
    return out


def grade_loss(out: GraderOutput, labels: torch.Tensor, weights: Sequence[torch.Tensor] | None = None,
               *, ordinal_weight: float = 0.0, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean over ROIs of (weighted) cross entropy + ``ordinal_weight`` x expected-stage L1.

    ``labels`` ``[B, 13]``, -1 = ignore. The ordinal term ``|E[stage] - stage| / (stages - 1)``
    makes a one-stage miss cheaper than a five-stage miss.
    """
    terms = []
    for c, logits in enumerate(out.logits):
        y = labels[:, c]
        valid = y >= 0
        if not bool(valid.any()):
            continue
        z, t = logits[valid].float(), y[valid]
        w = weights[c].to(z.device) if weights is not None else None
        loss = F.cross_entropy(z, t, weight=w, label_smoothing=label_smoothing)
        if ordinal_weight:
            k = z.shape[1]
            expected = (z.softmax(-1) * torch.arange(k, device=z.device, dtype=z.dtype)).sum(-1)
            loss = loss + ordinal_weight * ((expected - t).abs() / max(1, k - 1)).mean()
        terms.append(loss)
    if not terms:
        return sum(lg.sum() for lg in out.logits) * 0.0  # keeps the graph; nothing to learn
    return torch.stack(terms).mean()


def bone_age_loss(out: GraderOutput, ages: torch.Tensor, sex: torch.Tensor,
                  scorer: DifferentiableScorer, *, delta: float = 1.0,
                  prior_weight: float = 0.0, prior: str = "soft", prior_sd: float = 0.05,
                  concentration_weight: float = 0.0,
                  prior_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Huber between the bone age of the heads' stage probabilities and ``ages`` (years), plus:

    - the hand prior, ``prior_weight`` x a penalty on each ROI straying from the hand's level,
      the maturity fraction (points / top points) the label implies (the P50 score at the bone
      age over the top total: every bone at that fraction scores exactly the label). One
      scalar per image cannot say which bone carries the maturity; bones of one hand mature
      together (what atlas methods rely on), so each bone is held near the hand's level and
      its own crop decides how far it departs from it. ``prior="soft"``: cross entropy with
      the stage distribution of a bone whose fraction is spread around the level with sd
      ``prior_sd`` (each stage weighted by ``exp(-(its fraction - level)^2 / 2 sd^2)``;
      unimodal, ordinal targets, as label-distribution learning does for ages); ``"l2"``: the
      squared distance of the expected fraction from the level, summed over ROIs;
    - concentration, ``concentration_weight`` x the variance (in stages) of each ROI's stage
      distribution: expected points are linear in the probabilities, so a mixture of a low and
      a high stage would score like the middle one; the variance keeps the heads unimodal on
      neighbouring stages, so their argmax is a stage.

    ``out`` and the other tensors hold only the images supervised by bone age; ``prior_mask``
    ``[B]`` (bool), when given, limits the hand prior to those images: the prior is averaged
    over the masked images only (so its weight per image does not shrink with the mask), and
    no image masked: no prior term. The mask is per image, not per ROI: mixed training masks
    out every image with a stage label, so an image labelled on some ROIs only has no prior
    on its unlabelled ROIs either (the bone-age term still trains them).
    """
    probs = [lg.float().softmax(-1) for lg in out.logits]
    pred = scorer(probs, sex)
    loss = F.huber_loss(pred, ages.float(), delta=delta)
    if prior not in ("soft", "l2"):
        raise ValueError(f"hand prior {prior!r}: use soft or l2")
    keep = slice(None) if prior_mask is None else prior_mask.bool()
    if prior_weight and (prior_mask is None or bool(keep.any())):
        level = scorer.level(ages.float(), sex)
        if prior == "l2":
            frac = scorer.fractions(probs, sex)
            term = (frac - level[:, None]).pow(2).sum(1)[keep].mean()
        else:
            term = torch.stack([
                -(scorer.level_target(i, level, sex, prior_sd)
                  * lg.float().log_softmax(-1)).sum(-1)[keep].mean()
                for i, lg in enumerate(out.logits)]).mean()
        loss = loss + prior_weight * term
    if concentration_weight:
        var = []
        for p in probs:
            s = torch.arange(p.shape[1], device=p.device, dtype=p.dtype)
            mean = (p * s).sum(-1, keepdim=True)
            var.append((p * (s - mean).pow(2)).sum(-1))
        loss = loss + concentration_weight * torch.stack(var, 1).mean()
    return loss


def combine_terms(stage_term: torch.Tensor, age_term: torch.Tensor, *, staged: int, aged: int,
                  batch: int, age_weight: float = 1.0, weighting: str = "image",
                  stage_weight: float = 1.0) -> torch.Tensor:
    """One batch's loss from its stage term and its bone-age term, each a mean over its own
    images (``staged`` and ``aged`` of the ``batch``). ``image``: each term weighted by its
    images' share of the batch, so every image counts once; ``term``: the plain sum. The stage
    term is multiplied by ``stage_weight`` in both."""
    if weighting == "image":
        return stage_weight * (staged / batch) * stage_term + age_weight * (aged / batch) * age_term
    if weighting == "term":
        return stage_weight * stage_term + age_weight * age_term
    raise ValueError(f"mixed_weighting {weighting!r}: use image or term")


# --------------------------------------------------------------------------------------------
# What each image supervises
SUPERVISION = ("stages", "bone-age", "mixed")


@dataclass
class Supervised:
    """The records a run trains on, what each one supervises and what was left out."""

    records: list[ImageRecord]
    use_stages: dict[int, bool]  # record id -> its stage labels are used
    ages: dict[int, float]  # record id -> bone age (years) used as a label
    skipped: dict[str, int]
    #: record id -> every usable bone age, also of images supervised by stages (validation)
    reference_ages: dict[int, float] = field(default_factory=dict)


def supervised_records(records: Sequence[ImageRecord], recipe: GradeRecipe, supervision: str,
                       source: str) -> Supervised:
    """Pick the records ``supervision`` can learn from; count (and log) what is left out.

    A bone age supervises an image when it has a sex, all 13 ROI boxes and an age inside the
    sex's curve of the recipe's standard (outside it the inverse curve is flat: no signal).
    """
    if supervision not in SUPERVISION:
        raise InputError(f"supervision {supervision!r}: use one of {', '.join(SUPERVISION)}")
    if supervision == "stages":
        return Supervised(usable_records(records, recipe, source),
                          {r.id: True for r in records}, {}, {})
    std = recipe.standard
    curves = load_tables(std).curve
    ranges = {s: (float(curves[s][0][0]), float(curves[s][0][-1])) for s in SEXES}
    skipped = {"outside_curve": 0, "no_sex": 0, "missing_boxes": 0, "no_label": 0}
    keep, use_stages, ages, reference = [], {}, {}, {}
    for r in records:
        has_stages = supervision == "mixed" and any(
            k in r.boxes and k in r.stages_for(std) for k in ROI_KEYS)
        age, why = None, "no_label"
        if r.bone_age is not None:
            lo, hi = ranges.get(r.sex or "", (0.0, -1.0))
            if r.sex is None:
                why = "no_sex"
            elif not all(k in r.boxes for k in ROI_KEYS):
                why = "missing_boxes"
            elif not lo <= r.bone_age <= hi:
                why = "outside_curve"
            else:
                age = float(r.bone_age)
        if age is None and not has_stages:
            skipped[why] += 1
        if has_stages or age is not None:
            keep.append(r)
            use_stages[r.id] = has_stages
            if age is not None:
                reference[r.id] = age
                ages[r.id] = age  # mixed: a stage-labelled image's bone age supervises too
    if skipped["outside_curve"]:
        log.warning("%s: %d bone age(s) outside the %s curve (F %g-%g y, M %g-%g y) skipped",
                    source, skipped["outside_curve"], std, *ranges["F"], *ranges["M"])
    if skipped["no_sex"]:
        log.warning("%s: %d image(s) with a bone age but no sex skipped (the curve is per sex)",
                    source, skipped["no_sex"])
    if skipped["missing_boxes"]:
        log.warning("%s: %d image(s) with a bone age but fewer than 13 ROI boxes skipped (a "
                    "bone age needs every ROI's stage; give boxes in the manifest or "
                    "--boxes-from DETECTOR)", source, skipped["missing_boxes"])
    if skipped["no_label"]:
        log.warning("%s: %d image(s) with neither stages nor a bone age skipped",
                    source, skipped["no_label"])
    if not keep:
        if not any(r.bone_age is not None or r.stages_for(std) for r in records):
            stage_key = "stage" if std == "rus-chn" else "stage_tw3"
            raise InputError(f"{source}: no image has a 'bone_age' or a {stage_key!r}; nothing to "
                             "train a grader on (add bone ages in years, with 'sex', per image)")
        why = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in skipped.items() if n)
        raise InputError(f"{source}: no image can supervise a {std} grader by bone age ({why}); "
                         "images need a sex, 13 ROI boxes (or --boxes-from DETECTOR) and a bone "
                         "age inside the curve")
    if recipe.sex_embedding:
        no_sex = [r.path.name for r in keep if r.sex is None]
        if no_sex:
            raise InputError(f"{source}: {len(no_sex)} image(s) have no 'sex' (e.g. {no_sex[0]}); "
                             "the grader's sex embedding needs it (or set sex_embedding: false)")
    log.info("%s: %d image(s) supervised by stages, %d by bone age", source,
             sum(use_stages.values()), len(ages))
    return Supervised(keep, use_stages, ages, skipped, reference)


class WithBoneAges(Dataset):
    """A :class:`GradeDataset` whose items also carry the bone-age label (NaN: none), with the
    stage labels hidden on images that do not supervise by stages. Evaluation copies carry
    every usable bone age (``Supervised.reference_ages``) for validation."""

    def __init__(self, base: GradeDataset, sup: Supervised):
        self.base, self.sup = base, sup
        self.ages = sup.ages if base.train else sup.reference_ages

    def __len__(self) -> int:
        return len(self.base)

    @property
    def epoch(self) -> int:
        return self.base.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.base.epoch = value

    def as_eval(self) -> WithBoneAges:
        return WithBoneAges(self.base.as_eval(), self.sup)

    def preload(self) -> None:
        self.base.preload()

    def __getitem__(self, i: int):
        crops, labels, sex, present = self.base[i]
        rid = self.base.records[i].id
        if not self.sup.use_stages.get(rid, False):
            labels = torch.full_like(labels, -1)
        age = torch.tensor(self.ages.get(rid, float("nan")), dtype=torch.float32)
        return crops, labels, sex, present, age


# --------------------------------------------------------------------------------------------
def predict_loader(grader: RoiGrader, loader: DataLoader
                   ) -> tuple[list[dict[str, int]], list[dict[str, int]], list[int]]:
    """Predicted and true stages (ROIs with a box and a label) of the items of an unshuffled
    ``loader`` that have any box, and those items' indices."""
    pred, true, index = [], [], []
    start = 0
    for crops, labels, sex, present in loader:
        keep = present.numpy().any(1)
        index += [start + int(j) for j in np.flatnonzero(keep)]
        start += len(keep)
        pres, lab = present.numpy()[keep], labels.numpy()[keep]
        probs, _ = grader.predict_crops(crops.numpy()[keep], sex.numpy()[keep], pres)
        stages = np.stack([p.argmax(1) for p in probs], axis=1) if len(pres) else lab
        for j in range(len(pres)):
            graded = [c for c in range(len(ROI_KEYS)) if pres[j, c] and lab[j, c] >= 0]
            pred.append({ROI_KEYS[c]: int(stages[j, c]) for c in graded})
            true.append({ROI_KEYS[c]: int(lab[j, c]) for c in graded})
    return pred, true, index


def validate_ages(grader: RoiGrader, loader: DataLoader) -> dict[str, float]:
    """Validation of a bone-age-supervised run: the bone age of the argmax stages (table scorer,
    as the pipeline reports it) against the label, and stage accuracy where labels are used."""
    scorer = create_scorer(grader.standard)
    errors, exact, near = [], [], []
    for crops, labels, sex, present, age in loader:
        keep = present.numpy().any(1)
        if not keep.any():
            continue
        pres, lab = present.numpy()[keep], labels.numpy()[keep]
        sexes, ages = sex.numpy()[keep], age.numpy()[keep]
        probs, _ = grader.predict_crops(crops.numpy()[keep], sexes, pres)
        stages = np.stack([p.argmax(1) for p in probs], axis=1)
        for j in range(len(pres)):
            graded = (lab[j] >= 0) & pres[j]
            exact += (stages[j][graded] == lab[j][graded]).tolist()
            near += (np.abs(stages[j][graded] - lab[j][graded]) <= 1).tolist()
            if np.isfinite(ages[j]) and pres[j].all():
                sex_key = SEXES[int(sexes[j])]
                total = sum(scorer.points({k: int(stages[j, c]) for c, k in enumerate(ROI_KEYS)},
                                          sex_key).values())
                errors.append(abs(scorer.bone_age(total, sex_key)[0] - float(ages[j])))
    out = {"bone_age_mae_vs_label": float(np.mean(errors)) if errors else float("nan")}
    if exact:
        out.update(mean_accuracy=float(np.mean(exact)), mean_within_one=float(np.mean(near)))
    return out


def train_grader(
    recipe: GradeRecipe | dict | str | Path,
    coco: str | Path,
    images_dir: str | Path | None,
    out_dir: str | Path,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    val_fraction: float | None = None,
    device: str | None = None,
    seed: int = 0,
    workers: int = 0,
    cache: bool = True,
    init_weights: str | Path | None = None,
    phantom: bool | None = None,
    progress: bool = True,
    supervision: str = "stages",
    boxes_from: str | Path | None = None,
    segment: str | Path | None = None,
) -> FitResult:
    """Train a grader; the best weights folder goes to ``out_dir``.

    ``recipe``: a recipe file, mapping or model; ``epochs`` / ``batch_size`` / ``lr`` /
    ``val_fraction`` override its ``training`` block. ``init_weights``: a weights folder to
    start from (fine-tuning). ``phantom``: mark the card phantom-trained (default: detected
    from the manifest's images, ``"phantom": true``). ``supervision``: ``stages`` (best by val
    mean accuracy), ``bone-age`` or ``mixed`` (best by val bone-age error); see the module
    docstring. ``boxes_from``: a detector weights folder that boxes the images the manifest
    gives no boxes; ``segment``: the segmenter weights for images without ``mask_file`` (the
    bundled one when ``boxes_from`` is given and none is named). Predicted masks and boxes are
    cached in ``out_dir/predicted-labels``.
    """
    if isinstance(recipe, (str, Path)):
        recipe = read_recipe("grade", recipe)
    elif isinstance(recipe, dict):
        recipe = parse_recipe("grade", recipe)
    recipe = with_training_overrides(recipe, epochs=epochs, batch_size=batch_size, lr=lr,
                                     val_fraction=val_fraction)
    if supervision not in SUPERVISION:
        raise InputError(f"supervision {supervision!r}: use one of {', '.join(SUPERVISION)}")
    t = recipe.training
    device = setup_distributed(pick_device(device))  # under torchrun: this process's device
    seed_everything(seed)
    manifest = load_coco(coco, images_dir)
    all_records = manifest.records
    predicted: dict[str, int] = {}
    if boxes_from is not None or segment is not None:
        from ..labels.predicted import with_predicted_labels

        records = all_records
        all_records, predicted = run_on_main(  # under torchrun: process 0 predicts, shares
            lambda: with_predicted_labels(
                records, Path(out_dir) / "predicted-labels", detect=boxes_from, segment=segment,
                device=device, progress=progress))
        log.info("predicted labels: %s", predicted)
    sup = supervised_records(all_records, recipe, supervision, str(coco))
    by_age = supervision != "stages"

    def make_dataset(items, train):
        ds = GradeDataset(items, recipe, train=train, seed=seed, cache=cache)
        return WithBoneAges(ds, sup) if by_age else ds

    loaders = make_loaders(
        sup.records, make_dataset, val_fraction=t.val_fraction, seed=seed,
        batch_size=t.batch_size, val_batch_size=max(t.batch_size, 16), workers=workers,
        device=device, cache=cache)
    train_recs = loaders.train_items
    val_recs = loaders.val_items or loaders.train_items
    train_loader, val_loader = loaders.train, loaders.val
    staged = [r for r in train_recs if sup.use_stages.get(r.id, False)]

    model = build_model(recipe)
    if init_weights is not None:
        from ..weights import load_into, load_weights

        load_into(model, load_weights(init_weights))
    grader = RoiGrader(model, recipe, device=device)
    weighted = supervision != "mixed" or t.mixed_class_weights
    weights = class_weights(staged, recipe.standard, power=t.class_weight_power,
                            smoothing=t.class_weight_smoothing) if weighted else None
    scorer = DifferentiableScorer(recipe.standard).to(device)

    def loss_fn(model, batch):
        crops, labels, sex, present, *rest = (x.to(device, non_blocking=True) for x in batch)
        out = model(crops, sex, present)
        loss = grade_loss(out, labels, weights, ordinal_weight=t.ordinal_weight,
                          label_smoothing=t.label_smoothing)
        if rest:
            ages = rest[0]
            m = torch.isfinite(ages)
            if bool(m.any()):
                sub = GraderOutput([lg[m] for lg in out.logits], None)
                has_stages = (labels >= 0).any(1)
                age_term = bone_age_loss(sub, ages[m], sex[m], scorer, delta=t.age_huber_delta,
                                         prior_weight=t.hand_prior_weight,
                                         prior=t.hand_prior, prior_sd=t.hand_prior_sd,
                                         concentration_weight=t.concentration_weight,
                                         prior_mask=None if t.hand_prior_on_staged
                                         else ~has_stages[m])
                loss = combine_terms(loss, age_term, staged=int(has_stages.sum()),
                                     aged=int(m.sum()), batch=len(ages), age_weight=t.age_weight,
                                     weighting=t.mixed_weighting,
                                     stage_weight=t.mixed_stage_weight)
        return loss

    def validate(model) -> dict[str, float]:
        if by_age:
            return validate_ages(grader, val_loader)
        pred, true, index = predict_loader(grader, val_loader)
        m = grading_metrics(pred, true, [val_recs[i].sex for i in index], recipe.standard)
        out = {"mean_accuracy": m["accuracy"]["mean_exact"] or 0.0,
               "mean_within_one": m["accuracy"]["mean_within_one"] or 0.0}
        if m["bone_age"]["n"]:
            out["bone_age_mae"] = m["bone_age"]["mae_vs_true_stages"]
        return out

    if by_age and not any(r.id in sup.reference_ages for r in val_recs):
        raise InputError(f"{coco}: no validation image has a usable bone age, so a "
                         f"--supervision {supervision} run cannot choose its best epoch; use more "
                         "bone-age images or --supervision stages")
    if phantom is None:
        phantom = any(bool(r.extra.get("phantom")) for r in manifest.records)
    metric = "bone_age_mae_vs_label" if by_age else "mean_accuracy"
    card = {
        "intended_use": INTENDED_USE,
        "phantom_trained": bool(phantom),
        **({"notice": PHANTOM_NOTICE} if phantom else {}),
        "training_data": {"manifest": display_path(coco), "images": len(manifest.records),
                          "train": len(train_recs), "val": len(loaders.val_items),
                          "seed": seed, "supervision": supervision,
                          "train_with_stages": len(staged),
                          "train_with_bone_age": sum(r.id in sup.ages for r in train_recs),
                          **({"skipped": sup.skipped} if sup.skipped else {}),
                          **({"predicted_labels": {**predicted, "detector": str(boxes_from),
                                                   "segmenter": str(segment)}}
                             if predicted else {}),
                          "stage_histogram": stage_histogram(staged, recipe.standard)},
        "training": {**t.model_dump(), "device": device},
        "metric": ("bone_age_mae_vs_label: validation bone age of the argmax stages (table "
                   "scorer) against the label, years (lower is better); the best epoch by its "
                   f"mean over {t.age_select_window} epochs up to it") if by_age else
                  "mean_accuracy: validation exact stage accuracy averaged over the 13 ROIs",
        **input_card(recipe),
    }
    return fit(model, loaders.batches, loss_fn, validate, metric=metric, out_dir=out_dir,
               recipe=recipe, card=card, epochs=t.epochs, lr=t.lr, weight_decay=t.weight_decay,
               device=device, steps_per_epoch=len(train_loader), progress=progress,
               select_window=t.age_select_window if by_age else 1,
               higher_is_better=not by_age)


def stage_histogram(records: Sequence[ImageRecord], standard: str) -> dict[str, list[int]]:
    """Stage counts per ROI (what the class weights are computed from)."""
    counts = stage_counts(standard)
    return {k: np.bincount([r.stages_for(standard)[k] for r in records
                            if k in r.stages_for(standard)], minlength=counts[k]).tolist()
            for k in ROI_KEYS}
