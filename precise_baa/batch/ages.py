"""``precise-baa evaluate ages``: a pipeline's bone ages against reference readings.

For the common public kind of data (RSNA, the Digital Hand Atlas): radiographs with a bone-age
reading, sex and perhaps an age, but no ROI boxes or stages. The folder is scored with
:func:`precise_baa.batch.score_folder` (the labels' sex and age feed it, as ``--meta`` does)
and the scored bone ages are compared with the readings::

    OUT/scored/                 the scoring run: results.csv, assessments.jsonl, overlays/, report.html
    OUT/evaluation.md           counts, rejection reasons, agreement overall / by age group / by sex
    OUT/evaluation.json         the same as data, plus every image's row and every label problem
    OUT/bone_age_scatter.png    predicted against reference;  OUT/bland_altman.png
    OUT/contact_sheet.png       every scored or rejected radiograph's overlay with id, reference,
                                prediction and status (contact_sheet-001.png, ... when many)

Labels CSV: ``id,sex,bone_age[,chronological_age]``; the unit is ``--age-unit`` or the columns'
suffix (``bone_age_months``, ``bone_age_years``). ``id`` is the input's id: the path relative to
the images folder without suffix. A bad line is listed (``labels.csv:7: ...``) and left out,
never fatal; so are ids without an image and images without a label.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..schemas import parse_sex
from .metadata import Meta

UNITS = ("months", "years")
SCORED = "scored"
#: tiles per contact sheet (4 columns); more images make numbered pages
SHEET_PAGE = 24
#: below this many scored radiographs the report says its numbers are anecdotal
SMALL_N = 20
_ROI_REASON = "ROI(s) not found or implausible: "
_GP_NOTE = ("The reference may be a Greulich-Pyle reading while the pipeline scores {standard}: "
            "the standards differ by a roughly constant offset, so the bias-removed MAE and the "
            "correlation say how well the pipeline orders and spaces the hands; the raw MAE "
            "includes the offset.")


@dataclass(frozen=True)
class AgeLabel:
    """One usable line of the labels CSV (ages in years)."""

    id: str
    line: int
    sex: str | None
    bone_age: float
    chronological_age: float | None = None


def _age_column(cols: list[str], stem: str, unit: str | None, path: Path, required: bool) -> tuple[str | None, str | None]:
    """The column holding ``stem`` (plain, ``_months`` or ``_years``) and its unit."""
    found = [c for c in (stem, f"{stem}_months", f"{stem}_years") if c in cols]
    if not found:
        if required:
            raise InputError(f"{path}: needs a column {stem} (or {stem}_months / {stem}_years) beside "
                             f"id,sex; found {','.join(cols) or 'none'}")
        return None, unit
    if len(found) > 1:
        raise InputError(f"{path}: columns {', '.join(found)} all hold {stem}: keep one")
    col = found[0]
    suffix = col[len(stem) + 1:] or None
    if suffix and unit and suffix != unit:
        raise InputError(f"{path}: column {col} is in {suffix} but --age-unit {unit} was given: "
                         f"pass --age-unit {suffix} (or rename the column)")
    if not (suffix or unit):
        raise InputError(f"{path}: column {col} has no unit: pass --age-unit months or "
                         "--age-unit years (or name the column "
                         f"{stem}_months / {stem}_years)")
    return col, suffix or unit


def _age(text: str, column: str, unit: str, where: str, required: bool) -> float | None:
    if not text:
        if required:
            raise InputError(f"{where}: empty {column}")
        return None
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{where}: {column} {text!r} is not a number ({unit})") from None
    years = value / 12.0 if unit == "months" else value
    if not 0 <= years <= 30:
        other = "years" if unit == "months" else "months"
        raise InputError(f"{where}: {column} {text} {unit} is outside 0..30 years: if the column is "
                         f"in {other}, pass --age-unit {other}")
    return years


def read_age_labels(path: str | Path, age_unit: str | None = None) -> tuple[dict[str, AgeLabel], list[str], str]:
    """Labels by id, the problems (one line each, naming the CSV line) and the unit used.

    A missing file or missing column is an :class:`InputError`; a bad line is a problem and its
    id is left out (a duplicated id drops every line of it: no reading is preferred).
    """
    path = Path(path)
    if age_unit is not None and age_unit not in UNITS:
        raise InputError(f"--age-unit {age_unit!r}: use months or years")
    if not path.is_file():
        raise InputError(f"{path}: labels CSV not found")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        if "id" not in cols or "sex" not in cols:
            raise InputError(f"{path}: needs columns id,sex,bone_age[,chronological_age]; found "
                             f"{','.join(cols) or 'none'}")
        ba_col, unit = _age_column(cols, "bone_age", age_unit, path, required=True)
        ca_col, _ = _age_column(cols, "chronological_age", unit, path, required=False)
        assert ba_col is not None and unit is not None
        labels: dict[str, AgeLabel] = {}
        lines: dict[str, list[int]] = {}
        problems: list[str] = []
        for n, raw in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            where = f"{path.name}:{n}"
            rid = row.get("id", "")
            if not any(row.values()):
                continue
            if not rid:
                problems.append(f"{where}: empty id")
                continue
            lines.setdefault(rid, []).append(n)
            try:
                sex = parse_sex(row["sex"]) if row.get("sex") else None
                ba = _age(row.get(ba_col, ""), ba_col, unit, where, required=True)
                ca = _age(row.get(ca_col, ""), ca_col, unit, where, required=False) if ca_col else None
            except InputError as e:
                msg = str(e)
                problems.append(msg if msg.startswith(where) else f"{where}: {msg}")
                continue
            assert ba is not None
            labels.setdefault(rid, AgeLabel(rid, n, sex, ba, ca))
    for rid, at in lines.items():
        if len(at) > 1:
            problems.append(f"{path.name}:{at[1]}: duplicate id {rid!r} (lines "
                            f"{', '.join(map(str, at))}): all of its lines left out")
            labels.pop(rid, None)
    return labels, sorted(problems, key=_line_of), unit


def _line_of(problem: str) -> int:
    """The CSV line a problem names (``labels.csv:7: ...`` -> 7), for sorting."""
    m = re.search(r":(\d+): ", problem)
    return int(m.group(1)) if m else 0


def group_reasons(reasons: list[str]) -> dict[str, int]:
    """Rejection / error reasons counted by kind, a missing ROI counted per ROI.

    ``"ROI(s) not found or implausible: mc3, mp5"`` counts once for ``mc3`` and once for
    ``mp5``; other reasons group on the text before their first colon, numbers masked.
    """
    counts: Counter[str] = Counter()
    for reason in reasons:
        reason = reason or "no reason given"
        if reason.startswith(_ROI_REASON):
            for roi in reason[len(_ROI_REASON):].split(","):
                counts[f"ROI not found or implausible: {roi.strip()}"] += 1
        else:
            counts[re.sub(r"\d+(\.\d+)?", "#", reason.split(":", 1)[0]).strip()] += 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _fmt(v: Any, digits: int = 2, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def evaluate_ages(
    pipeline,
    images: str | Path,
    labels: str | Path,
    out_dir: str | Path,
    *,
    age_unit: str | None = None,
    batch_size: int = 4,
    workers: int = 0,
    resume: bool = False,
    progress: bool = True,
    tile: int = 512,
) -> dict[str, Any]:
    """Score ``images`` with ``pipeline`` and compare its bone ages with the ``labels`` CSV.

    Writes the files the module docstring lists into ``out_dir`` and returns the JSON data.
    """
    from ..detect.anatomy import LOW_SCORE
    from ..evaluation import age_metrics, age_plots
    from ..paths import display_path
    from ..pipeline import MIRRORED_BY_DETECTION
    from ..report import ASSESSMENTS, read_assessments
    from .discovery import discover
    from .loop import score_folder

    images, out_dir = Path(images), Path(out_dir)
    if not images.is_dir():
        raise InputError(f"{images}: not a folder (--images takes the folder of radiographs)")
    if out_dir.resolve() == images.resolve() or images.resolve() in out_dir.resolve().parents:
        raise InputError(f"{out_dir}: the output folder lies inside the images folder {images}; "
                         "choose one outside it (its pictures would be read as radiographs)")
    labelled, problems, unit = read_age_labels(labels, age_unit)
    scored_dir = out_dir / SCORED
    items = discover(images, exclude=scored_dir)
    image_ids = {it.id for it in items}
    for rid, lab in labelled.items():
        if rid not in image_ids:
            hint = ""
            if Path(rid).suffix and Path(rid).with_suffix("").as_posix() in image_ids:
                hint = ": ids carry no file suffix"
            problems.append(f"{Path(labels).name}:{lab.line}: id {rid!r} has no image in {images}{hint}")
    evaluated = [it.id for it in items if it.id in labelled]
    if not evaluated:
        example = next(iter(sorted(image_ids)), "none")
        raise InputError(f"{labels}: no id matches an image in {images} (ids are paths relative to "
                         f"the folder without suffix, e.g. {example!r})")
    problems.sort(key=_line_of)
    unlabelled = sorted(image_ids - set(labelled))
    if (scored_dir / ASSESSMENTS).exists() and not resume:
        raise InputError(f"{scored_dir} already holds a scoring run: pass --resume to continue it, "
                         "or choose another output folder")
    meta = {rid: Meta(labelled[rid].sex, labelled[rid].chronological_age) for rid in evaluated}
    score_folder(pipeline, images, scored_dir, meta=meta, batch_size=batch_size, workers=workers,
                 resume=resume, pictures=True, progress=progress, title="bone age against readings")
    done = read_assessments(scored_dir / ASSESSMENTS)

    rows: list[dict[str, Any]] = []
    for rid in evaluated:
        lab, a = labelled[rid], done.get(rid)
        status = a.status if a is not None else "error"
        pred = a.bone_age_years if a is not None and a.status == "ok" else None
        rows.append({
            "id": rid, "sex": (a.sex if a is not None and a.sex else lab.sex), "reference_years": lab.bone_age,
            "predicted_years": pred, "difference_years": None if pred is None else pred - lab.bone_age,
            "status": status, "reason": (a.reason if a is not None else "not scored") or "",
        })
    ok = [r for r in rows if r["status"] == "ok"]
    # what a reader should check on the contact sheet: results that needed the detector's
    # mirrored retry or a ROI from a low-score box
    repairs: Counter[str] = Counter()
    for r in ok:
        for f in done[r["id"]].flags:
            if f.code == MIRRORED_BY_DETECTION:
                repairs["assessed mirrored"] += 1
            elif f.code == LOW_SCORE:
                repairs[f"{f.roi} from a low-score box"] += 1
    metrics = age_metrics([r["predicted_years"] for r in ok], [r["reference_years"] for r in ok],
                          [r["sex"] for r in ok])
    counts = Counter(r["status"] for r in rows)
    res: dict[str, Any] = {
        "images": display_path(images), "labels": display_path(labels), "age_unit": unit,
        "pipeline": pipeline.recipe.name if pipeline.recipe else "pipeline",
        "standard": pipeline.standard, "phantom": bool(pipeline.phantom_trained),
        "counts": {"images": len(items), "labels": len(labelled), "evaluated": len(rows), "scored": counts["ok"], "rejected": counts["rejected"],
                   "errors": counts["error"], "label_problems": len(problems),
                   "unlabelled_images": len(unlabelled)},
        "rejection_reasons": group_reasons([r["reason"] for r in rows if r["status"] == "rejected"]),
        "error_reasons": group_reasons([r["reason"] for r in rows if r["status"] == "error"]),
        "scored_after_repair": dict(repairs),
        "bone_age": metrics,
        "label_problems": problems,
        "unlabelled_images": unlabelled,
        "per_image": rows,
        "models": [m.model_dump() for m in pipeline.models],
    }
    if res["phantom"]:
        from ..weights import PHANTOM_NOTICE

        res["notice"] = PHANTOM_NOTICE
    plots = age_plots(out_dir, [r["predicted_years"] for r in ok], [r["reference_years"] for r in ok],
                      sexes=[r["sex"] for r in ok], offset_line=True)
    sheets = write_contact_sheets(out_dir, scored_dir, rows, tile=tile)
    res["outputs"] = {"scored": SCORED, "plots": [p.name for p in plots],
                      "contact_sheets": [p.name for p in sheets]}
    (out_dir / "evaluation.json").write_text(json.dumps(res, indent=2) + "\n")
    (out_dir / "evaluation.md").write_text(format_markdown(res))
    return res


def write_contact_sheets(out_dir: Path, scored_dir: Path, rows: list[dict[str, Any]], *,
                         tile: int = 512) -> list[Path]:
    """Every scored / rejected overlay tiled with its id, reference, prediction and status,
    youngest reference first; :data:`SHEET_PAGE` tiles per PNG."""
    import cv2

    from ..report import safe_name
    from ..report.figures import contact_sheet

    colours = {"ok": (90, 200, 90), "rejected": (40, 160, 255)}
    pics, captions, tints = [], [], []
    for r in sorted(rows, key=lambda r: (r["reference_years"], r["id"])):
        f = scored_dir / "overlays" / f"{safe_name(r['id'])}.png"
        img = cv2.imread(str(f), cv2.IMREAD_COLOR) if r["status"] != "error" and f.is_file() else None
        if img is None:
            continue
        pred = "-" if r["predicted_years"] is None else f"{r['predicted_years']:.1f} y"
        diff = "" if r["difference_years"] is None else f" ({r['difference_years']:+.1f})"
        state = "OK" if r["status"] == "ok" else f"REJECTED: {r['reason']}".replace(_ROI_REASON, "missing ")
        captions.append(f"{r['id'][:60]}  {r['sex'] or '?'}\nref {r['reference_years']:.1f} y  "
                        f"pred {pred}{diff}\n{state[:tile // 8]}")
        pics.append(img)
        tints.append(colours[r["status"]])
    pages = [range(i, min(i + SHEET_PAGE, len(pics))) for i in range(0, len(pics), SHEET_PAGE)]
    out = []
    for k, page in enumerate(pages, 1):
        name = "contact_sheet.png" if len(pages) == 1 else f"contact_sheet-{k:03d}.png"
        out.append(contact_sheet([pics[i] for i in page], out_dir / name, cols=min(4, len(page)),
                                 tile=tile, captions=[captions[i] for i in page],
                                 caption_colours=[tints[i] for i in page]))
    return out


def format_markdown(res: dict[str, Any]) -> str:
    """``evaluation.md`` from :func:`evaluate_ages`'s data."""
    c, a = res["counts"], res["bone_age"]
    al = a["all"]
    std = (res["standard"] or "").upper()
    months = res["age_unit"] == "months"

    def also_months(v: float | None) -> str:
        return f" ({12 * v:.1f} months)" if months and v is not None else ""

    lines = [f"# Bone age against reference readings: {res['labels']}", ""]
    if res.get("phantom"):
        lines += [f"> **Phantom-trained weights** ({res['notice']}). On real radiographs these "
                  "numbers show how far such a pipeline is from working; they say nothing about "
                  "clinical accuracy.", ""]
    lines += [f"Pipeline `{res['pipeline']}` ({std}) on `{res['images']}`: {c['evaluated']} labelled "
              f"radiographs, **{c['scored']} scored**, {c['rejected']} rejected, {c['errors']} "
              f"error(s). Reference ages in {res['age_unit']}, shown in years.", ""]
    if al["n"]:
        lines += [f"**After removing the mean bias ({_fmt(al['bias'], signed=True)} y): MAE "
                  f"{_fmt(al['bias_removed_mae'])} y{also_months(al['bias_removed_mae'])}, Pearson r "
                  f"{_fmt(al['pearson_r'], 3)} (Spearman {_fmt(al['spearman_r'], 3)}), n = {al['n']}.**"
                  + (f" With {al['n']} scored radiographs these numbers are anecdotes, not estimates."
                     if al["n"] < SMALL_N else ""),
                  "", f"Raw: MAE {_fmt(al['mae'])} y{also_months(al['mae'])}, RMSE {_fmt(al['rmse'])} y, "
                  f"within 1 y {_fmt(100 * al['within_1y'], 1)} %.", "",
                  _GP_NOTE.format(standard=std or "its standard"), ""]
    else:
        lines += ["**No radiograph was scored: there is nothing to compare.**", ""]
    lines += ["## Inputs", "",
              f"- radiographs in the folder: {c['images']}; usable labels: {c['labels']}, "
              f"{c['evaluated']} of them with a radiograph",
              f"- scored {c['scored']}, rejected {c['rejected']}, error {c['errors']}"]
    for title, key in (("rejected", "rejection_reasons"), ("errors", "error_reasons"),
                       ("scored after a detector repair (check these overlays)",
                        "scored_after_repair")):
        if res.get(key):
            lines.append(f"- {title}: " + "; ".join(f"{k} ({n})" for k, n in res[key].items()))
    if res["label_problems"]:
        lines += [f"- label problems ({len(res['label_problems'])}; those lines are left out):"]
        lines += [f"  - {p}" for p in res["label_problems"][:50]]
        if len(res["label_problems"]) > 50:
            lines.append("  - ... (all in evaluation.json)")
    if res["unlabelled_images"]:
        shown = ", ".join(res["unlabelled_images"][:20])
        more = " ..." if len(res["unlabelled_images"]) > 20 else ""
        lines.append(f"- images without a usable label ({len(res['unlabelled_images'])}; scored but "
                     f"not compared): {shown}{more}")
    lines += ["", "## Agreement (years; predicted - reference)", "",
              "Bias-removed MAE subtracts the overall mean bias from every row, so a row's own "
              "bias shows where the offset is not constant.", "",
              "| group | n | MAE | bias | MAE, bias removed | RMSE | within 1 y | Pearson r | Spearman |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, blk in [("all", al), *a["by_age_group"].items(),
                      *((f"sex {s}", b) for s, b in a["by_sex"].items())]:
        within = "-" if blk["within_1y"] is None else f"{100 * blk['within_1y']:.0f} %"
        lines.append(f"| {name} | {blk['n']} | {_fmt(blk['mae'])} | {_fmt(blk['bias'], signed=True)} | "
                     f"{_fmt(blk['bias_removed_mae'])} | {_fmt(blk['rmse'])} | {within} | "
                     f"{_fmt(blk['pearson_r'], 3)} | {_fmt(blk['spearman_r'], 3)} |")
    rows = sorted(res["per_image"], key=lambda r: (r["status"] != "ok", -abs(r["difference_years"] or 0),
                                                  r["id"]))
    shown = rows[:60]
    lines += ["", f"## Per image ({'all' if len(rows) == len(shown) else f'first {len(shown)} of {len(rows)}'}"
              "; scored by largest difference, then the rest)", "",
              "| id | sex | reference | predicted | difference | status |", "|---|---|---|---|---|---|"]
    for r in shown:
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}"
        lines.append(f"| {r['id']} | {r['sex'] or '-'} | {r['reference_years']:.2f} | "
                     f"{_fmt(r['predicted_years'])} | {_fmt(r['difference_years'], signed=True)} | "
                     f"{status.replace('|', '/')} |")
    out = res["outputs"]
    lines += ["", "## Files", ""]
    if out["plots"]:
        lines.append("- " + ", ".join(f"`{p}`" for p in out["plots"]))
    if out["contact_sheets"]:
        lines.append("- every overlay at a glance: " + ", ".join(f"`{p}`" for p in out["contact_sheets"]))
    lines += [f"- the scoring run: `{out['scored']}/` (results.csv, assessments.jsonl, overlays/, "
              "report.html)", "- all of the above as data: `evaluation.json`", ""]
    return "\n".join(lines) + "\n"


def cmd_evaluate_ages(args) -> int:
    """``precise-baa evaluate ages``: exit 0 when every label line was usable and every labelled
    radiograph was scored or rejected with a reason; 1 when a label line was left out or an
    input errored (the report is written either way). Images without a label only warn."""
    from .cli import _build

    read_age_labels(args.labels, args.age_unit)  # a bad file fails before the models load
    pipe = _build(args)
    res = evaluate_ages(pipe, args.images, args.labels, args.out, age_unit=args.age_unit,
                        batch_size=args.batch_size, workers=args.workers, resume=args.resume,
                        progress=not args.quiet)
    c, al = res["counts"], res["bone_age"]["all"]
    for p in res["label_problems"]:
        print(f"warning: {p}", file=sys.stderr)
    if res["unlabelled_images"]:
        print(f"warning: {len(res['unlabelled_images'])} image(s) without a usable label "
              f"(e.g. {res['unlabelled_images'][0]!r}): scored, not compared", file=sys.stderr)
    if res["phantom"]:
        print(f"note: {res['notice']}", file=sys.stderr)
    print(f"{c['scored']} scored, {c['rejected']} rejected, {c['errors']} error(s) of {c['evaluated']}; "
          f"bias {_fmt(al['bias'], signed=True)} y, MAE {_fmt(al['mae'])} y, bias-removed MAE "
          f"{_fmt(al['bias_removed_mae'])} y, Pearson r {_fmt(al['pearson_r'], 3)}")
    print(f"report: {Path(args.out) / 'evaluation.md'}")
    return 1 if (c["errors"] or c["label_problems"]) else 0
