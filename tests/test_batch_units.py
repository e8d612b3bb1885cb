"""Batch plumbing that needs no model: discovery, ids, metadata, shards, safe file names."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from precise_baa.batch import discover, in_shard, parse_shard, read_meta, scan
from precise_baa.errors import InputError
from precise_baa.report import read_assessments, safe_name, safe_path
from precise_baa.schemas import Assessment


def img(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((80, 80), 100, np.uint8))
    return path


def test_discover_recursive_ids_and_duplicates(tmp_path):
    img(tmp_path / "a.png")
    img(tmp_path / "ward 3" / "b.jpg")
    img(tmp_path / "dup.png")
    img(tmp_path / "dup.tif")
    img(tmp_path / "case.png")
    img(tmp_path / "case.PNG")
    img(tmp_path / "x.png")
    img(tmp_path / "x.png.png")  # keeps its suffix too once x.png keeps its own
    img(tmp_path / "x.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"")
    img(tmp_path / "out" / "overlays" / "a.png")  # an output folder inside the input is skipped
    found = scan(tmp_path, exclude=tmp_path / "out")
    ids = [it.id for it in found.items]
    assert ids == ["a", "case.PNG", "case.png", "dup.png", "dup.tif", "ward 3/b", "x.jpg", "x.png",
                   "x.png.png"]
    assert len(set(ids)) == len(found.items)  # every input its own id, and its own file
    by_id = {it.id: it for it in found.items}
    assert by_id["dup.png"].suffixed and by_id["dup.png"].bare_id == "dup" and not by_id["a"].suffixed
    assert all(it.error is None for it in found.items)
    reasons = {p.name: r for p, r in ((s.path, s.reason) for s in found.skipped)}
    assert reasons == {"notes.txt": reasons["notes.txt"], ".hidden.png": "hidden file",
                       "out": "the output folder of this run"}
    assert reasons["notes.txt"].startswith("unsupported suffix .txt (supported: PNG, JPEG")
    assert discover(tmp_path, exclude=tmp_path / "out") == found.items


def test_discover_lists_every_skipped_path_and_follows_linked_folders_once(tmp_path):
    import os

    root = tmp_path / "in"
    img(root / "real" / "p1.png")
    img(root / ".cache" / "p2.png")  # hidden folder: not entered, listed once
    img(root / "..x.png")
    (root / "real" / "loop").symlink_to(root / "real")  # a loop
    (root / "elsewhere").symlink_to(tmp_path / "outside")
    img(tmp_path / "outside" / "p3.png")  # a linked folder is followed
    (root / "dangling.png").symlink_to(root / "gone.png")
    os.mkfifo(root / "pipe.png")
    (root / "README").write_text("x" * 300)  # no suffix, not DICOM
    found = scan(root)
    assert [it.id for it in found.items] == ["elsewhere/p3", "real/p1"]
    reasons = {s.path.relative_to(root).as_posix(): s.reason for s in found.skipped}
    assert reasons[".cache"] == "hidden folder" and reasons["..x.png"] == "hidden file"
    assert reasons["real/loop"].startswith("symbolic link to a folder already scanned as")
    assert reasons["dangling.png"].startswith("broken symbolic link")
    assert reasons["pipe.png"].startswith("not a regular file")
    assert reasons["README"].startswith("no suffix and not DICOM")
    assert len(reasons) == 6 and all("\n" not in r for r in reasons.values())


def test_discover_file_list_and_single_file(tmp_path):
    a = img(tmp_path / "x" / "a.png")
    lst = tmp_path / "inputs.txt"
    lst.write_text("# radiographs\nx/a.png\n\n" + str(a) + "\n")
    found = scan(lst)  # the same file twice is one input (one row); the repeat is listed
    assert [it.path for it in found.items] == [tmp_path / "x" / "a.png"]
    assert [(s.path, s.reason) for s in found.skipped] == [(a, "listed twice (inputs.txt lines 2 and 4)")]
    b = img(tmp_path / "y" / "a.png")  # same name elsewhere: the ids keep what tells them apart
    lst.write_text("x/a.png\ny/a.png\n" + str(img(tmp_path.parent / "z-outside" / "a.png")) + "\n")
    items = discover(lst)
    assert [it.id for it in items][:2] == ["x/a", "y/a"] and items[1].path == b
    far = [img(tmp_path.parent / f"{w}-outside" / "a.png") for w in "uv"]  # both would be "a"
    lst.write_text(f"{a}\n{far[0]}\n{far[1]}\n")
    items = discover(lst)
    assert [it.id for it in items] == ["x/a", far[0].resolve().as_posix(), far[1].resolve().as_posix()]
    assert discover(a)[0].id == "a"
    with pytest.raises(InputError, match="no such file"):
        discover(tmp_path / "missing")


def test_read_meta_validates_every_row(tmp_path):
    p = tmp_path / "meta.csv"
    p.write_text("id,sex,chronological_age\np1,F,9.5\np2,male,\np3,,4\n")
    meta = read_meta(p)
    assert meta["p1"].sex == "F" and meta["p1"].chronological_age == 9.5
    assert meta["p2"].sex == "M" and meta["p2"].chronological_age is None
    assert meta["p3"].sex is None
    for body, msg in [
        ("id,sex\np1,F\np1,M\n", r"meta.csv:3: duplicate id 'p1'"),
        ("id,sex\np1,X\n", r"meta.csv:2: bad sex 'X'"),
        ("id,sex,chronological_age\np1,F,nine\n", r"meta.csv:2: chronological_age 'nine'"),
        ("id,sex,chronological_age\np1,F,45\n", r"outside 0..30"),
        ("name,gender\np1,F\n", r"needs columns id,sex"),
        ("id,sex\np1,F\n\"p2,M\np3,F\n", r"meta.csv:3: not valid CSV: unexpected end of data \(a quote"),
        ("id,sex\np1,F\np2,M,9,x\n", r"meta.csv:3: 4 fields but the header has 2 \(id,sex\)"),
        ("id,sex\n\"p1\"x,F\n", r"meta.csv:2: not valid CSV"),
    ]:
        p.write_text(body)
        with pytest.raises(InputError, match=msg) as e:
            read_meta(p)
        assert "\n" not in str(e.value)
    p.write_bytes("id,sex\nJos\u00e9,M\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"meta.csv: not UTF-8 text; save the CSV as UTF-8"):
        read_meta(p)
    p.write_bytes("\ufeffid,sex\nJos\u00e9,M\n\n".encode("utf-8"))  # a BOM and a blank line are fine
    assert read_meta(p)["Jos\u00e9"].sex == "M"


def test_shards_partition_the_inputs():
    ids = [f"ward{w}/p{i:04d}" for w in range(3) for i in range(200)]
    for n in (1, 3, 8):
        parts = [{i for i in ids if in_shard(i, k, n)} for k in range(1, n + 1)]
        assert sum(len(p) for p in parts) == len(ids)  # nothing scored twice ...
        assert set().union(*parts) == set(ids)  # ... nothing lost
        assert all(len(p) > 0 for p in parts)
    assert parse_shard("2/8") == (2, 8)
    for bad in ("0/3", "4/3", "x", "1/0"):
        with pytest.raises(InputError, match="bad --shard"):
            parse_shard(bad)


def test_safe_names_never_escape(tmp_path):
    for id in ("../../etc/passwd", "/abs/path", "ward 3/p<1>", "..", "a" * 500, "CON"):
        name = safe_name(id)
        assert "/" not in name and not name.startswith(".") and len(name) <= 120
        p = safe_path(tmp_path, "overlays", f"{name}.png")
        assert tmp_path.resolve() in p.parents
    assert safe_name("p001") == "p001"
    assert safe_name("a b") != safe_name("a_b")  # sanitising never merges two ids
    with pytest.raises(ValueError, match="outside"):
        safe_path(tmp_path, "..", "x.png")


def test_truncated_jsonl_line_is_ignored(tmp_path):
    p = tmp_path / "assessments.jsonl"
    good = Assessment(id="p1", status="ok", sex="F", bone_age_years=9.0)
    p.write_text(good.model_dump_json() + "\n" + good.model_copy(update={"id": "p2"}).model_dump_json()[:40])
    done = read_assessments(p)
    assert list(done) == ["p1"] and done["p1"].bone_age_years == 9.0


def test_resume_repair_moves_a_cut_line_aside(tmp_path):
    from precise_baa.batch import repair_jsonl

    p = tmp_path / "assessments.jsonl"
    a = Assessment(id="p1", status="ok", sex="F", bone_age_years=9.0).model_dump_json()
    b = Assessment(id="p2", status="ok", sex="M", bone_age_years=7.0).model_dump_json()
    p.write_text(a + "\n" + b[:50])  # a kill during the second write
    assert repair_jsonl(p) == 50
    assert p.read_text() == a + "\n"
    assert (tmp_path / "assessments.jsonl.fragment").read_text() == b[:50] + "\n"
    assert repair_jsonl(p) == 0 and p.read_text() == a + "\n"  # nothing more to do
    p.write_text(b[:20])  # cut in the very first line
    assert repair_jsonl(p) == 20 and p.read_text() == ""
    assert repair_jsonl(tmp_path / "absent.jsonl") == 0


def test_output_folder_is_checked_before_work(tmp_path):
    import os

    from precise_baa.batch import prepare_output

    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(InputError, match=r"afile: is a file, not a folder"):
        prepare_output(f)
    with pytest.raises(InputError, match=r"cannot be created \(.*afile is a file\)"):
        prepare_output(f / "sub" / "out")
    assert prepare_output(tmp_path / "new" / "out").is_dir()
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(InputError, match="not writable"):
            prepare_output(ro)


def _shard(out, k, n, complete=True, ids=()):
    d = out / f"shard-{k}-of-{n}"
    d.mkdir(parents=True)
    (d / "assessments.jsonl").write_text("".join(
        Assessment(id=i, source=f"{i}.png", status="error", reason="x").model_dump_json() + "\n"
        for i in ids))
    (d / "skipped.csv").write_text(f"path,reason\nnotes{k}.txt,unsupported suffix .txt\n")
    if complete is not None:
        (d / "run.json").write_text(json.dumps({"complete": complete}))
    return d


def test_merge_needs_every_shard_finished_unless_partial(tmp_path):
    from precise_baa.batch import IncompleteShardsError, check_shards, merge_shards

    out = tmp_path / "out"
    _shard(out, 1, 3, ids=["a"])
    _shard(out, 3, 3, complete=False, ids=["c"])
    check = check_shards(out)
    assert check.missing == [2] and set(check.incomplete) == {3}
    with pytest.raises(IncompleteShardsError, match=r"missing shard\(s\) 2/3; shard 3/3 did not finish"):
        merge_shards(out)
    assert not (out / "results.csv").exists()
    merge_shards(out, allow_partial=True)
    assert (out / "results.csv").read_text().count("\n") == 3  # header + a + c
    assert json.loads((out / "run.json").read_text())["complete"] is False
    _shard(out, 2, 3, complete=None, ids=["b"])  # no run.json: still running, or killed
    with pytest.raises(IncompleteShardsError, match=r"shard 2/3 has no run.json"):
        merge_shards(out)
    (out / "shard-2-of-3" / "run.json").write_text('{"complete": true}')
    (out / "shard-3-of-3" / "run.json").write_text('{"complete": true}')
    merge_shards(out)
    assert (out / "skipped.csv").read_text().count("unsupported suffix") == 3
    _shard(out, 1, 2)
    with pytest.raises(InputError, match="shards of different counts"):
        merge_shards(out)


@pytest.mark.parametrize("argv,message", [
    (["score", "in", "--out", "o", "--batch-size", "0"], "argument --batch-size: must be 1 or more, got 0"),
    (["score", "in", "--out", "o", "--workers", "-1"], "argument --workers: must be 0 or more, got -1"),
    (["score", "in", "--out", "o", "--shard", ""], "argument --shard: expected K/N, e.g. 2/8"),
    (["score", "in", "--out", "o", "--shard", "3/2"], "argument --shard: need 1 <= K <= N"),
    (["score", "in", "--out", "o", "--max-pixels", "lots"], "argument --max-pixels: 'lots' is not a pixel"),
    (["stage-score", "--sex", "F", "--stages", "x", "--threshold", "nan"], "argument --threshold: must be a finite"),
    (["stage-score", "--sex", "F", "--stages", "x", "--threshold", "-1"], "argument --threshold: must be a finite"),
    (["merge"], "the following arguments are required: out"),
])
def test_bad_arguments_are_one_line_errors(argv, message, capsys):
    from precise_baa.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err
    assert err.count("\n") == 1 and "usage:" not in err and "--help" in err


def test_devices_are_checked():
    import torch

    from precise_baa.training import pick_device

    assert pick_device("cpu") == "cpu" and pick_device(None) in ("cpu", "cuda")
    for bad in ("bogus", "", "cuda:99" if torch.cuda.is_available() else "cuda"):
        with pytest.raises(InputError, match="device"):
            pick_device(bad)


def test_a_stage_failing_on_one_radiograph_fails_it_alone():
    """Per-stage engines: a batch whose stage raises is run again work by work; only the
    culprit is marked failed and reported as an internal error row."""
    import numpy as np

    from precise_baa.batch.discovery import InputItem
    from precise_baa.batch.engines import finish_works, run_stage_isolated
    from precise_baa.imaging import as_radiograph
    from precise_baa.pipeline import Work

    class Fake:
        def run_stage(self, stage, works):
            if any(w.id == "bad" for w in works):
                raise RuntimeError("boom")
            for w in works:
                w.timings[stage] = 1.0

        def finish(self, works):
            return [f"assessed {w.id}" for w in works]

    rad = as_radiograph(np.random.default_rng(0).random((64, 64), dtype=np.float32))
    works = [Work(id=i, rad=rad) for i in ("a", "bad", "c")]
    run_stage_isolated(Fake(), "detect", works)
    assert [w.failed for w in works] == [None, "internal error: RuntimeError: boom", None]
    assert [sorted(w.timings) for w in works] == [["detect"], [], ["detect"]]
    run_stage_isolated(Fake(), "grade", works)  # a failed work goes no further
    assert works[1].timings == {} and works[0].timings == {"detect": 1.0, "grade": 1.0}
    items = [InputItem(id=w.id, path=Path(f"{w.id}.png")) for w in works]
    rows = [(it, w, None) for it, w in zip(items, works)] + [(items[0], None, "empty file")]
    out = finish_works(Fake(), rows, pixels=False)
    assert out[0] == ("assessed a", None) and out[2] == ("assessed c", None)
    assert out[1][0].status == "error" and out[1][0].reason == "internal error: RuntimeError: boom"
    assert out[3][0].status == "error" and out[3][0].reason == "empty file"
