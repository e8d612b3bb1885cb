"""The DICOM node (``precise-baa serve``) on loopback: pynetdicom SCUs send phantom radiographs,
results are checked on disk and where they were forwarded (a pynetdicom SCP here, Orthanc when
the ``Orthanc`` binary is installed: Debian package ``orthanc``)."""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    ComprehensiveSRStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    RTPlanStorage,
    SecondaryCaptureImageStorage,
    Verification,
)
from test_dicom import (
    ROOT,
    PhantomDicoms,
    launcher_cmd,
    make_pipeline,
    phantom_dicoms_for,
    polyline_box,
)

from precise_baa.batch import score_folder
from precise_baa.dicom import DicomNode, DicomWriter
from precise_baa.dicom.node import Destination
from precise_baa.errors import InputError

NODE_LOG = "precise_baa.dicom.node"


# ------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def dicoms(tmp_path_factory) -> PhantomDicoms:
    return phantom_dicoms_for(tmp_path_factory)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """A storage SCP standing in for the PACS: keeps every dataset it is sent."""

    def __init__(self, ae_title: str = "PACS", port: int = 0):
        self.datasets: list[pydicom.Dataset] = []
        ae = AE(ae_title=ae_title)
        for sop in (ComprehensiveSRStorage, SecondaryCaptureImageStorage):
            ae.add_supported_context(sop)
        self.server = ae.start_server(("127.0.0.1", port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.port = self.server.server_address[1]

    def _store(self, event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        self.datasets.append(ds)
        return 0x0000

    def close(self):
        self.server.shutdown()


def send(port: int, items, called: str = "PRECISE_BAA", calling: str = "MODALITY"):
    """C-STORE files / datasets in one association; [(status, error comment)] per item."""
    ae = AE(ae_title=calling)
    for sop in (DigitalXRayImageStorageForPresentation, CTImageStorage, RTPlanStorage):
        ae.add_requested_context(sop)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established, "association refused"
    out = []
    for item in items:
        st = assoc.send_c_store(pydicom.dcmread(item) if isinstance(item, Path) else item)
        out.append((int(st.Status), str(st.get("ErrorComment", ""))))
    assoc.release()
    return out


def echo(port: int, called: str = "PRECISE_BAA") -> int:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def rows(out: Path) -> dict[str, dict]:
    with (out / "results.csv").open() as f:
        return {r["id"]: r for r in csv.DictReader(f)}


def uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Proc:
    """A subprocess whose stderr lines are collected in the background."""

    def __init__(self, cmd: list[str], **kw):
        self.p = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                  cwd=ROOT, **kw)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stderr:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, needle: str, timeout: float = 180):
        wait_for(lambda: needle in self.text or self.p.poll() is not None, timeout, repr(needle))
        assert needle in self.text, f"{needle!r} not in:\n{self.text}"

    def stop(self, timeout: float = 180) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            return self.p.wait(timeout)
        finally:
            if self.p.poll() is None:
                self.p.kill()


# ------------------------------------------------------------------------------ in process
def test_destination_and_ae_title_are_checked():
    d = Destination.parse("PACS@10.0.0.5:104")
    assert (d.ae_title, d.host, d.port, str(d)) == ("PACS", "10.0.0.5", 104, "PACS@10.0.0.5:104")
    for bad in ("PACS", "PACS@host", "PACS@host:x", "@host:104", "WAY_TOO_LONG_AE_TITLE@h:1"):
        with pytest.raises(InputError, match="AE"):
            Destination.parse(bad)
    with pytest.raises(InputError, match="AE title"):
        DicomNode(object(), "out", ae_title="")


def test_a_burst_is_scored_by_one_pipeline_and_forwarded(dicoms, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=NODE_LOG)
    loads, batches = [], []

    def factory():
        pipe = make_pipeline(dicoms.table)
        real = pipe.assess_batch

        def counting(rads, *args, **kw):
            batches.append(len(rads))
            return real(rads, *args, **kw)

        pipe.assess_batch = counting
        loads.append(pipe)
        return pipe

    pacs = Receiver()
    node = DicomNode(factory, tmp_path / "node", port=0, forward=f"PACS@127.0.0.1:{pacs.port}",
                     batch_size=2, collect_seconds=0.2)
    node.start()
    try:
        port = node.address[1]
        assert echo(port) == 0x0000
        f = dicoms.files
        results = {}
        senders = [threading.Thread(target=lambda k, items: results.__setitem__(k, send(port, items)),
                                    args=(k, items)) for k, items in
                   (("ward", [f["a"], f["b"]]), ("clinic", [f["c1"], f["c2"]]))]
        for t in senders:
            t.start()
        for t in senders:
            t.join()
        assert all(st == (0x0000, "") for r in results.values() for st in r), results
        assert node.wait_idle(300)
        assert send(port, [f["a"]]) == [(0, "")]  # sent again: not scored again, results resent
        assert node.wait_idle(120)
    finally:
        node.stop()
        pacs.close()
    out = tmp_path / "node"
    assert len(loads) == 1 and node.pipeline is loads[0]  # one model for the whole burst
    assert sum(batches) == 4 and len(batches) >= 2  # ... scored over several batches
    uids = {name: uid_of(p) for name, p in dicoms.files.items()}
    got = rows(out)
    assert set(got) == set(uids.values()) and all(r["status"] == "ok" for r in got.values())
    assert len((out / "assessments.jsonl").read_text().splitlines()) == 4
    assert (out / "report.html").is_file() and not any((out / "outbox").iterdir())
    assert sorted(p.name for p in (out / "inbox").iterdir()) == sorted(f"{u}.dcm" for u in uids.values())
    assert "image 2 of study" in caplog.text and "was scored before" in caplog.text
    # the PACS got one SR and one SC per image (those of `a` twice), each in its source's study
    assert len(pacs.datasets) == 10 and len({d.SOPInstanceUID for d in pacs.datasets}) == 8
    for path in dicoms.files.values():
        src = pydicom.dcmread(path, stop_before_pixels=True)
        srs = [d for d in pacs.datasets if d.Modality == "SR" and d.CurrentRequestedProcedureEvidenceSequence[0]
               .ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID]
        scs = [d for d in pacs.datasets if d.Modality != "SR"
               and d.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID]
        assert len({d.SOPInstanceUID for d in srs}) == len({d.SOPInstanceUID for d in scs}) == 1
        assert srs[0].StudyInstanceUID == scs[0].StudyInstanceUID == src.StudyInstanceUID
    # the same as `score` with the same pipeline on the same files
    ref = tmp_path / "score"
    writer = DicomWriter(ref)
    score_folder(loads[0], dicoms.folder, ref, progress=False, pictures=False, on_result=writer)
    by_name = rows(ref)
    for name, uid in uids.items():
        assert float(got[uid]["bone_age_years"]) == float(by_name[name]["bone_age_years"])
        a = hd.sr.srread(out / "dicom" / f"{uid}_sr.dcm")
        b = hd.sr.srread(ref / "dicom" / f"{name}_sr.dcm")
        assert a.SOPInstanceUID == b.SOPInstanceUID  # same source, same weights: same UID
        ga, gb = (x.content.get_planar_roi_measurement_groups() for x in (a, b))
        assert len(ga) == len(gb) == 13
        assert [polyline_box(x) for x in ga] == [polyline_box(x) for x in gb]


def test_bad_inputs_are_answered_and_logged_and_nothing_stops(dicoms, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=NODE_LOG)
    node = DicomNode(make_pipeline(dicoms.table), tmp_path / "node", port=0, collect_seconds=0.1,
                     pictures=False)
    node.start()
    try:
        port = node.address[1]
        plan = pydicom.dcmread(get_testdata_file("rtplan.dcm"))
        no_pixels = pydicom.dcmread(dicoms.files["a"])
        del no_pixels.PixelData
        no_pixels.SOPInstanceUID = generate_uid()
        cut = pydicom.dcmread(dicoms.files["a"])
        cut.PixelData = cut.PixelData[: len(cut.PixelData) // 3]
        cut.SOPInstanceUID = generate_uid()
        ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))  # an image, but not a hand
        ct.PatientSex = "F"
        statuses = send(port, [plan, no_pixels, cut, ct, dicoms.files["a"]])
        assert statuses[0][0] == 0x0122 and "not an image: RT Plan Storage" in statuses[0][1]
        assert statuses[1] == (0xA900, "image without pixel data")
        assert statuses[2][0] == 0xC210 and "pixel data cut short" in statuses[2][1]
        assert statuses[3] == statuses[4] == (0x0000, "")
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(DigitalXRayImageStorageForPresentation)
        assoc = ae.associate("127.0.0.1", port, ae_title="NOT_THE_NODE")
        assert assoc.is_rejected
        assert node.wait_idle(300)
        assert echo(port) == 0x0000  # still serving
    finally:
        node.stop()
    text = caplog.text
    for needle in ("refused (0x0122): not an image: RT Plan Storage",
                   "refused (0xA900): image without pixel data", "refused (0xC210): pixel data cut short",
                   "rejected: called AE title 'NOT_THE_NODE' is not 'PRECISE_BAA'"):
        assert needle in text
    out = tmp_path / "node"
    got = rows(out)
    assert got[uid_of(dicoms.files["a"])]["status"] == "ok"
    ct_row = got[str(ct.SOPInstanceUID)]
    assert ct_row["status"] in ("rejected", "error") and ct_row["message"]
    assert f"{ct.SOPInstanceUID}: {ct_row['status']}: " in text
    # the CT is an image: its SR says why it was not scored
    sr = hd.sr.srread(out / "dicom" / f"{ct.SOPInstanceUID}_sr.dcm")
    assert sr.StudyInstanceUID == ct.StudyInstanceUID
    assert len(list((out / "inbox").glob("*.dcm"))) == 2  # only what was accepted


def test_a_restart_scores_what_was_pending_and_sends_what_was_not_sent(dicoms, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=NODE_LOG)
    out = tmp_path / "node"
    inbox = out / "inbox"
    inbox.mkdir(parents=True)
    for name in ("a", "c1"):  # received, acknowledged, then the machine went down
        shutil.copy(dicoms.files[name], inbox / f"{uid_of(dicoms.files[name])}.dcm")
    (inbox / "1.2.3.4.dcm").write_bytes(dicoms.files["b"].read_bytes()[:150])  # cut short on disk
    (inbox / ".1.2.3.5.dcm.x1y2z3.tmp").write_bytes(b"half")  # never acknowledged
    port = free_port()  # the PACS is down
    node = DicomNode(make_pipeline(dicoms.table), out, port=0, forward=f"PACS@127.0.0.1:{port}",
                     retry_seconds=0.5, network_timeout=5, pictures=False)
    node.start()
    try:
        wait_for(lambda: (out / "results.csv").is_file() and len(rows(out)) == 3, 300, "3 results")
        wait_for(lambda: "cannot reach PACS@127.0.0.1" in caplog.text, 60, "a failed forward")
    finally:
        node.stop()
    got = rows(out)
    assert got["1.2.3.4"]["status"] == "error" and got["1.2.3.4"]["message"]
    assert [got[uid_of(dicoms.files[n])]["status"] for n in ("a", "c1")] == ["ok", "ok"]
    assert "3 received file(s) pending from before: queued" in caplog.text
    assert not (inbox / ".1.2.3.5.dcm.x1y2z3.tmp").exists()
    waiting = sorted(p.name for p in (out / "outbox").glob("*.dcm"))
    assert len(waiting) == 4  # SR + SC of the two images; the unreadable file has none

    pacs = Receiver(port=port)  # the PACS is back
    node = DicomNode(make_pipeline(dicoms.table), out, port=0, forward=f"PACS@127.0.0.1:{port}",
                     pictures=False)
    node.start()
    try:
        assert node.wait_idle(120)
    finally:
        node.stop()
        pacs.close()
    assert len(pacs.datasets) == 4 and not list((out / "outbox").glob("*.dcm"))
    assert len((out / "assessments.jsonl").read_text().splitlines()) == 3  # nothing scored twice


# ------------------------------------------------------------------------------ the command line
def test_serve_command_stops_on_sigterm_and_loses_nothing(dicoms, tmp_path):
    out = tmp_path / "node"
    port = free_port()
    args = ["serve", "--port", str(port), "--out", str(out), "--pipeline", str(dicoms.recipe),
            "--device", "cpu", "--batch-size", "1", "--no-pictures"]
    serve = Proc(launcher_cmd(*args))
    try:
        serve.wait_for("listening as AE PRECISE_BAA on 127.0.0.1")
        assert "pipeline loaded" in serve.text
        sent = list(dicoms.files.values())
        assert send(port, sent) == [(0, "")] * 4  # acknowledged: on disk from here on
        assert serve.stop() == 0  # SIGTERM at once: the batch being scored is finished
    finally:
        serve.stop()
    assert "SIGTERM: stopping" in serve.text and "Traceback" not in serve.text
    uids = {uid_of(p) for p in sent}
    assert {p.stem for p in (out / "inbox").glob("*.dcm")} == uids
    jsonl = out / "assessments.jsonl"
    scored = {json.loads(x)["id"] for x in jsonl.read_text().splitlines()} if jsonl.exists() else set()
    assert scored <= uids
    serve = Proc(launcher_cmd(*args))  # a restart scores the rest
    try:
        wait_for(lambda: (out / "results.csv").is_file() and len(rows(out)) == 4, 300, "4 results")
    finally:
        assert serve.stop() == 0
    assert set(rows(out)) == uids and all(r["status"] == "ok" for r in rows(out).values())
    if scored != uids:
        assert f"{len(uids - scored)} received file(s) pending from before" in serve.text
    assert serve.text.count("pipeline loaded") == 1


@pytest.fixture(scope="module")
def scored(dicoms, tmp_path_factory) -> Path:
    """``precise-baa score --dicom-out`` on the phantom DICOMs (the reference for the PACS)."""
    out = tmp_path_factory.mktemp("score-cli") / "out"
    p = subprocess.run(launcher_cmd("score", str(dicoms.folder), "--out", str(out), "--dicom-out",
                                    "--pipeline", str(dicoms.recipe), "--device", "cpu", "--quiet",
                                    "--no-pictures"),
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "DICOM results: 4 SR, 4 SC" in p.stderr
    return out


def test_score_dicom_out_writes_sr_and_sc(scored, dicoms):
    names = sorted(p.name for p in (scored / "dicom").iterdir())
    assert names == sorted(f"{n}_{k}.dcm" for n in dicoms.files for k in ("sr", "sc"))
    for n, path in dicoms.files.items():
        sr = hd.sr.srread(scored / "dicom" / f"{n}_sr.dcm")
        assert sr.StudyInstanceUID == pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID


# ------------------------------------------------------------------------------ a real PACS
class Orthanc:
    """Orthanc on free loopback ports with a throw-away configuration and storage."""

    def __init__(self, exe: str, folder: Path, node_port: int):
        self.http, self.dicom = free_port(), free_port()
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "precise-baa-test", "StorageDirectory": str(folder / "db"),
            "IndexDirectory": str(folder / "db"), "HttpPort": self.http, "DicomPort": self.dicom,
            "DicomAet": "ORTHANC", "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True, "DicomAlwaysAllowStore": False,
            "DicomCheckModalityHost": True, "DicomModalities": {
                "node": ["PRECISE_BAA", "127.0.0.1", node_port]},
            "Plugins": [], "StorageCompression": False, "ConcurrentJobs": 1,
        }
        cfg = folder / "orthanc.json"
        cfg.write_text(json.dumps(config))
        self.log = (folder / "orthanc.log").open("w")
        self.p = subprocess.Popen([exe, str(cfg)], stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self._up, 120, "Orthanc's REST API")
        self.version = self.get("/system")["Version"]

    def _up(self) -> bool:
        assert self.p.poll() is None, "Orthanc exited; see orthanc.log"
        try:
            self.get("/system")
            return True
        except OSError:
            return False

    def get(self, path: str, raw: bool = False):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=10) as r:
            data = r.read()
        return data if raw else json.loads(data)

    def instances(self) -> list[pydicom.Dataset]:
        return [pydicom.dcmread(io.BytesIO(self.get(f"/instances/{i}/file", raw=True)))
                for i in self.get("/instances")]

    def close(self):
        self.p.terminate()
        try:
            self.p.wait(30)
        except subprocess.TimeoutExpired:
            self.p.kill()
        self.log.close()


def test_round_trip_through_orthanc(dicoms, scored, tmp_path, record_property):
    exe = shutil.which("Orthanc")
    if exe is None:
        pytest.skip("Orthanc is not installed (Debian package orthanc; make test installs it as root)")
    node_port = free_port()
    pacs = Orthanc(exe, tmp_path / "orthanc", node_port)
    record_property("orthanc_version", pacs.version)
    out = tmp_path / "node"
    serve = Proc(launcher_cmd("serve", "--port", str(node_port), "--out", str(out), "--pipeline",
                              str(dicoms.recipe), "--device", "cpu", "--no-pictures",
                              "--forward", f"ORTHANC@127.0.0.1:{pacs.dicom}"))
    try:
        serve.wait_for("listening as AE PRECISE_BAA")
        assert send(node_port, list(dicoms.files.values())) == [(0, "")] * 4
        wait_for(lambda: len(pacs.get("/instances")) >= 8, 300, "8 instances in Orthanc")
        stored = pacs.instances()
        studies = pacs.get("/studies")
    finally:
        assert serve.stop() == 0
        pacs.close()
    assert "forwarded" in serve.text
    # SR and SC landed in the sources' studies (three studies, though no source was sent to it)
    assert len(stored) == 8 and len(studies) == 3
    sources = {uid_of(p): (n, pydicom.dcmread(p, stop_before_pixels=True))
               for n, p in dicoms.files.items()}
    srs = [d for d in stored if d.Modality == "SR"]
    scs = [d for d in stored if d.Modality != "SR"]
    assert len(srs) == len(scs) == 4
    for ds in scs:
        name, src = sources[ds.SourceImageSequence[0].ReferencedSOPInstanceUID]
        assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.pixel_array.shape[2] == 3
    for ds in srs:
        sr = hd.sr.ComprehensiveSR.from_dataset(ds)
        ref = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        name, src = sources[ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID]
        assert sr.StudyInstanceUID == src.StudyInstanceUID and str(sr.PatientName) == "Phantom^Hand"
        local = hd.sr.srread(scored / "dicom" / f"{name}_sr.dcm")
        assert sr.SOPInstanceUID == local.SOPInstanceUID  # what `score` writes, bit for bit in content

        def summary(x):
            image = x.content.get_image_measurement_groups()[0]
            groups = x.content.get_planar_roi_measurement_groups()
            per_roi = sorted((g.tracking_identifier, polyline_box(g),
                              {m.name.meaning: float(m.value) for m in g.get_measurements()})
                             for g in groups)
            return {m.name.meaning: float(m.value) for m in image.get_measurements()}, per_roi

        (ages, rois), (ref_ages, ref_rois) = summary(sr), summary(local)
        assert ages["Bone age"] == pytest.approx(ref_ages["Bone age"]) and len(rois) == 13
        assert rois == ref_rois
