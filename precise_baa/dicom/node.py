"""The DICOM node behind ``precise-baa serve``: receive radiographs, score them, send results on.

A pynetdicom Storage SCP (C-STORE, C-ECHO) with one loaded pipeline. What happens to a
radiograph sent to it::

    C-STORE -> checks -> OUT/inbox/<SOPInstanceUID>.dcm (written atomically, fsync'ed)
            -> status 0x0000 to the sender -> queue
    worker thread: batches of the queue -> the scoring loop (score_folder: results.csv,
            assessments.jsonl, overlays/, report.html as `score` writes them)
            -> OUT/dicom/<id>_sr.dcm + <id>_sc.dcm -> OUT/outbox/ -> C-STORE to --forward
            (removed from outbox/ once the destination accepted them; retried otherwise)

Nothing is lost on a restart: received files whose SOP Instance UID has no assessment yet are
scored at start-up, and results not yet accepted by the destination are sent again. SIGTERM
stops accepting associations, finishes the batch being scored and exits.

Answers to the sender (each with a log line; the status's Error Comment says why):

- 0x0000 success: stored and queued (or a precise-baa result sent back to the node: ignored);
- 0x0122 SOP class not supported: not an image (an SR, a presentation state, RT plan, ...);
- 0xA900 data set does not match SOP class: an image without pixel data;
- 0xC210 cannot understand: the data set does not decode, or its pixel data is cut short;
- 0xA700 out of resources: the file could not be written (disk full, permissions);
- a wrong called AE title: the association is rejected (called AE title not recognised).
"""

from __future__ import annotations

import logging
import os
import queue
import re
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, PreciseBaaError
from ..paths import atomic_write
from ..report import ASSESSMENTS, RESULTS, read_assessments, safe_name, write_results_csv
from ..schemas import Assessment
from .writer import DICOM_DIR, DicomWriter, is_own_result

log = logging.getLogger("precise_baa.dicom.node")

INBOX = "inbox"
OUTBOX = "outbox"
DEFAULT_AE_TITLE = "PRECISE_BAA"
DEFAULT_PORT = 11112  # IANA's registered DICOM port (104 needs root)
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_OK_STORE = {0x0000, 0xB000, 0xB006, 0xB007}  # success and warnings: the destination kept it


def check_ae_title(title: str, what: str = "AE title") -> str:
    """An AE title: 1-16 characters of printable ASCII without backslash."""
    t = title.strip()
    if not t or len(t) > 16 or "\\" in t or not t.isascii() or not t.isprintable():
        raise InputError(f"bad {what} {title!r}: 1-16 printable ASCII characters, no backslash")
    return t


@dataclass(frozen=True)
class Destination:
    """Where results are forwarded: ``AE@HOST:PORT``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        ae, sep, rest = text.partition("@")
        host, sep2, port = rest.rpartition(":")
        if not sep or not sep2 or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InputError(f"bad --forward {text!r}: expected AE@HOST:PORT, e.g. PACS@10.0.0.5:104")
        return cls(check_ae_title(ae, "--forward AE title"), host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def _status(code: int, comment: str):
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds


def _pixel_bytes_expected(ds) -> int | None:
    """Bytes of native (uncompressed) pixel data the header announces; None when compressed."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and ts.is_compressed:
        return None
    try:
        n = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)
        n *= int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError):
        return None
    return (n + 7) // 8 if bits == 1 else n * (bits // 8)


def _sop_name(uid: str) -> str:
    from pydicom.uid import UID

    return UID(uid).name


def _is_image_class(uid: str) -> bool:
    return "Image Storage" in _sop_name(uid)


class DicomNode:
    """A Storage SCP that scores what it receives with one pipeline (see the module docstring).

    ``pipeline`` is a :class:`~precise_baa.pipeline.Pipeline` or a zero-argument factory called
    exactly once, at :meth:`start`. ``forward`` is a :class:`Destination` or ``"AE@HOST:PORT"``.

    >>> node = DicomNode(pipe, "out/node", port=11112, forward="PACS@127.0.0.1:4242")  # doctest: +SKIP
    >>> node.serve_forever()  # until SIGTERM / Ctrl-C                                  # doctest: +SKIP
    """

    def __init__(
        self,
        pipeline: Any | Callable[[], Any],
        out_dir: str | Path,
        *,
        ae_title: str = DEFAULT_AE_TITLE,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        forward: Destination | str | None = None,
        batch_size: int = 4,
        pictures: bool = True,
        collect_seconds: float = 0.5,
        retry_seconds: float = 30.0,
        network_timeout: float = 30.0,
    ):
        self._pipeline_source = pipeline
        self.pipeline = None
        self.out_dir = Path(out_dir)
        self.inbox = self.out_dir / INBOX
        self.outbox = self.out_dir / OUTBOX
        self.ae_title = check_ae_title(ae_title)
        self.host, self.port = host, int(port)
        if not 0 <= self.port < 65536:
            raise InputError(f"bad --port {port}: 1-65535 (0 picks a free one)")
        self.forward = Destination.parse(forward) if isinstance(forward, str) else forward
        self.batch_size = max(1, int(batch_size))
        self.pictures = pictures
        self.collect_seconds = collect_seconds
        self.retry_seconds = retry_seconds
        self.network_timeout = network_timeout
        self.writer = DicomWriter(self.out_dir)
        self.counts: Counter = Counter()  # received / refused / scored statuses, for logs and tests
        self._queue: queue.Queue[Path] = queue.Queue()
        self._lock = threading.Lock()
        self._queued: set[str] = set()
        self._done: dict[str, str] = {}  # id -> status of what is in assessments.jsonl
        self._studies: Counter = Counter()
        self._stop = threading.Event()
        self._forward_now = threading.Event()
        self._worker: threading.Thread | None = None
        self._ae = None
        self._server = None
        self._last_forward = 0.0

    # ------------------------------------------------------------------ life cycle
    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the node listens on (the real port when 0 was asked)."""
        if self._server is None:
            return self.host, self.port
        return self._server.server_address[:2]

    def start(self) -> None:
        """Load the pipeline, queue what is pending on disk, start the worker and listen."""
        from pynetdicom import AE, evt

        if self._worker is not None:
            raise RuntimeError("node already started")
        for d in (self.inbox, self.outbox, self.out_dir / DICOM_DIR):
            d.mkdir(parents=True, exist_ok=True)
        src = self._pipeline_source
        self.pipeline = src() if callable(src) and not hasattr(src, "assess_batch") else src
        self._recover()
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = self.network_timeout
        ae.maximum_pdu_size = 0  # no limit on what peers send
        self._add_contexts(ae)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo),
                    (evt.EVT_REJECTED, self._on_rejected)]
        try:
            self._server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        except OSError as e:
            raise PreciseBaaError(f"cannot listen on {self.host}:{self.port}: {e.strerror or e}; "
                                  "choose another --port or --host") from None
        self._ae = ae
        self._worker = threading.Thread(target=self._work, name="precise-baa-scoring", daemon=True)
        self._worker.start()
        host, port = self.address
        log.info("listening as AE %s on %s:%d; results in %s%s", self.ae_title, host, port,
                 self.out_dir, f"; forwarding to {self.forward}" if self.forward else "")

    def stop(self, timeout: float | None = 600.0) -> None:
        """Stop accepting associations, let open ones finish (10 s), finish the batch being
        scored (and its forwarding), then return. Queued files stay pending on disk."""
        if self._server is not None:
            self._server.shutdown()  # no new associations
            deadline = time.monotonic() + 10.0
            while self._ae.active_associations and time.monotonic() < deadline:
                time.sleep(0.05)
            self._ae.shutdown()  # aborts what is still open: unacknowledged, the sender retries
            self._server = None
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout)
        pending = self._queue.qsize()
        log.info("stopped%s", f"; {pending} received file(s) pending for the next start" if pending else "")

    def serve_forever(self) -> None:
        """:meth:`start`, then run until SIGTERM or SIGINT (Ctrl-C); then :meth:`stop`."""
        stop = threading.Event()

        def on_signal(signum, frame):
            log.info("%s: stopping (finishing the current batch)", signal.Signals(signum).name)
            stop.set()

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not stop.wait(0.5):
                if self._worker is not None and not self._worker.is_alive():
                    raise PreciseBaaError("the scoring worker died; see the log above")
        finally:
            self.stop()
            for s, h in old.items():
                signal.signal(s, h)

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Wait until nothing is queued or being scored and the outbox is empty (tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            outbox_empty = not self.forward or not any(self.outbox.glob("*.dcm"))
            if self._queue.unfinished_tasks == 0 and outbox_empty:
                return True
            time.sleep(0.05)
        return False

    # ------------------------------------------------------------------ receiving
    @staticmethod
    def _add_contexts(ae) -> None:
        from pydicom.uid import AllTransferSyntaxes
        from pynetdicom import AllStoragePresentationContexts
        from pynetdicom.sop_class import Verification

        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, AllTransferSyntaxes)
        ae.add_supported_context(Verification)

    @staticmethod
    def _peer(event) -> str:
        r = event.assoc.requestor
        return f"{r.ae_title}@{r.address}"

    def _on_echo(self, event) -> int:
        log.info("C-ECHO from %s", self._peer(event))
        return 0x0000

    def _on_rejected(self, event) -> None:
        rq = event.assoc.requestor.primitive
        called = str(getattr(rq, "called_ae_title", "") or "").strip()
        calling = str(getattr(rq, "calling_ae_title", "") or "").strip()
        why = (f"called AE title {called!r} is not {self.ae_title!r}" if called != self.ae_title
               else "too many associations or identity refused")
        log.warning("association from %s@%s rejected: %s", calling, event.assoc.requestor.address, why)
        self.counts["rejected_association"] += 1

    def _refuse(self, code: int, why: str, uid: str, peer: str):
        log.warning("C-STORE %s from %s refused (0x%04X): %s", uid or "?", peer, code, why)
        self.counts["refused"] += 1
        return _status(code, why)

    def _on_store(self, event):
        req = event.request
        peer = self._peer(event)
        sop_class = str(req.AffectedSOPClassUID or "")
        uid = str(req.AffectedSOPInstanceUID or "").strip()
        if not _UID.match(uid) or len(uid) > 64:
            return self._refuse(0xA900, "bad SOP Instance UID", uid, peer)
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
        except Exception as e:  # noqa: BLE001 - whatever a peer sends, the node answers
            return self._refuse(0xC210, f"data set does not decode ({type(e).__name__})", uid, peer)
        if is_own_result(ds):
            log.info("C-STORE %s from %s: a precise-baa result, not scored again", uid, peer)
            self.counts["ignored"] += 1
            return 0x0000
        if not _is_image_class(sop_class):
            return self._refuse(0x0122, f"not an image: {_sop_name(sop_class)}"[:64], uid, peer)
        if "PixelData" not in ds:
            return self._refuse(0xA900, "image without pixel data", uid, peer)
        expected = _pixel_bytes_expected(ds)
        got = len(ds.PixelData or b"")
        if expected is not None and got < expected:
            return self._refuse(0xC210, f"pixel data cut short: {got} of {expected} bytes", uid, peer)
        path = self.inbox / f"{uid}.dcm"
        try:
            atomic_write(path, event.encoded_dataset(), fsync=True)
        except OSError as e:
            log.error("C-STORE %s from %s: cannot write %s: %s", uid, peer, path, e)
            self.counts["refused"] += 1
            return _status(0xA700, f"cannot store: {e.strerror or e}")
        self.counts["received"] += 1
        study = str(ds.get("StudyInstanceUID", "") or "?")
        with self._lock:
            self._studies[study] += 1
            n_study = self._studies[study]
        note = (f"; image {n_study} of study {study}: each image is scored and reported on its own"
                if n_study > 1 else "")
        if self._enqueue(path):
            log.info("received %s %s from %s: queued%s", _sop_name(sop_class), uid, peer, note)
        else:
            log.info("received %s %s from %s again%s", _sop_name(sop_class), uid, peer, note)
        return 0x0000

    def _enqueue(self, path: Path) -> bool:
        """Queue a received file. One already scored (ok or rejected) is not scored again: its
        results are forwarded again instead; one that failed (error) is retried."""
        uid = path.stem
        with self._lock:
            if uid in self._queued:
                return False
            done = self._done.get(uid) in ("ok", "rejected")
            if not done:
                self._queued.add(uid)
        if not done:
            self._queue.put(path)
            return True
        if self.forward:
            self._outbox_add(sorted((self.out_dir / DICOM_DIR).glob(f"{safe_name(uid)}_s[rc].dcm")))
            self._forward_now.set()
            log.info("%s was scored before: its results are forwarded again", uid)
        else:
            log.info("%s was scored before: results in %s", uid, self.out_dir / DICOM_DIR)
        return False

    def _recover(self) -> None:
        """At start-up: forget half-written files, queue received files not scored yet."""
        for tmp in self.inbox.glob(".*.tmp"):  # paths.atomic_open's temporary files
            tmp.unlink(missing_ok=True)  # never acknowledged: the sender sends it again
        self._done = {k: a.status for k, a in read_assessments(self.out_dir / ASSESSMENTS).items()}
        files = sorted(self.inbox.glob("*.dcm"), key=lambda p: (p.stat().st_mtime, p.name))
        pending = [p for p in files if p.stem not in self._done]
        for p in pending:
            self._enqueue(p)
        if pending:
            log.info("%d received file(s) pending from before: queued", len(pending))
        waiting = len(list(self.outbox.glob("*.dcm")))
        if waiting:
            log.info("%d result file(s) waiting in %s to be forwarded", waiting, self.outbox)
            self._forward_now.set()

    # ------------------------------------------------------------------ scoring
    def _take_batch(self) -> list[Path]:
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.collect_seconds
        while len(batch) < self.batch_size:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(self._queue.get(timeout=left))
            except queue.Empty:
                break
        return batch

    def _work(self) -> None:
        while True:
            batch = self._take_batch()
            if batch:
                try:
                    self._score(batch)
                except Exception:  # noqa: BLE001 - the node keeps serving; files stay pending
                    log.exception("scoring a batch of %d failed; the files stay in %s",
                                  len(batch), self.inbox)
                finally:
                    with self._lock:
                        self._queued.difference_update(p.stem for p in batch)
                    for _ in batch:
                        self._queue.task_done()
            if self.forward and (batch or self._forward_now.is_set() or self._retry_due()):
                self._forward_now.clear()
                self._send_outbox()
            if self._stop.is_set():
                return

    def _retry_due(self) -> bool:
        return (time.monotonic() - self._last_forward > self.retry_seconds
                and any(self.outbox.glob("*.dcm")))

    def _score(self, batch: list[Path]) -> None:
        from ..batch import score_folder
        from ..report.html import render_report

        t0 = time.perf_counter()
        listing = self.inbox / ".batch.txt"
        listing.write_text("".join(f"{p.name}\n" for p in batch))
        summary = score_folder(
            self.pipeline, listing, self.out_dir, batch_size=self.batch_size, resume=True,
            pictures=self.pictures, progress=False, on_result=self._on_result, title="DICOM node",
        )
        listing.unlink(missing_ok=True)
        every = list(read_assessments(self.out_dir / ASSESSMENTS).values())
        write_results_csv(self.out_dir / RESULTS, every)  # the whole node, not only this batch
        if self.pictures:
            render_report(self.out_dir, every, title="DICOM node")
        c = summary.counts
        log.info("batch of %d in %.1f s: %d scored, %d rejected, %d error(s)", len(batch),
                 time.perf_counter() - t0, c.get("ok", 0), c.get("rejected", 0), c.get("error", 0))

    def _on_result(self, a: Assessment, pixels) -> None:
        with self._lock:
            self._done[a.id] = a.status
        self.counts[a.status] += 1
        if a.status == "ok":
            log.info("%s: bone age %.2f y (%s, maturity score %s)", a.id, a.bone_age_years,
                     a.standard, a.maturity_score)
        else:
            log.warning("%s: %s: %s", a.id, a.status, a.reason)
        try:
            paths = self.writer(a, pixels)
        except Exception as e:  # noqa: BLE001 - the result is kept in assessments.jsonl
            log.error("%s: DICOM results could not be written (%s: %s)", a.id, type(e).__name__, e)
            return
        if self.forward:
            self._outbox_add(paths)

    # ------------------------------------------------------------------ forwarding
    def _outbox_add(self, paths: list[Path]) -> None:
        for p in paths:
            dst = self.outbox / p.name
            tmp = self.outbox / f".{p.name}.part"
            tmp.unlink(missing_ok=True)
            try:
                os.link(p, tmp)
            except OSError:
                shutil.copyfile(p, tmp)
            os.replace(tmp, dst)

    def _send_outbox(self) -> None:
        from pynetdicom import AE
        from pynetdicom.sop_class import ComprehensiveSRStorage, SecondaryCaptureImageStorage

        self._last_forward = time.monotonic()
        files = sorted(self.outbox.glob("*.dcm"))
        if not files or self.forward is None:
            return
        dest = self.forward
        ae = AE(ae_title=self.ae_title)
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = self.network_timeout
        ae.connection_timeout = min(10.0, self.network_timeout)
        for sop in (ComprehensiveSRStorage, SecondaryCaptureImageStorage):
            ae.add_requested_context(sop)
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
        if not assoc.is_established:
            log.warning("cannot reach %s (association %s); %d file(s) kept in %s, retried in %.0f s",
                        dest, "rejected" if assoc.is_rejected else "failed", len(files),
                        self.outbox, self.retry_seconds)
            return
        sent = 0
        try:
            for f in files:
                try:
                    status = assoc.send_c_store(f)
                except Exception as e:  # noqa: BLE001 - keep it for the next try
                    log.warning("forwarding %s to %s failed: %s", f.name, dest, e)
                    if not assoc.is_established:
                        break
                    continue
                code = int(getattr(status, "Status", -1)) if status else -1
                if code in _OK_STORE:
                    f.unlink(missing_ok=True)
                    sent += 1
                else:
                    comment = str(status.get("ErrorComment", "")) if status else "no answer"
                    log.warning("%s refused %s (status 0x%04X %s); kept in %s", dest, f.name,
                                code & 0xFFFF, comment, self.outbox)
        finally:
            if assoc.is_established:
                assoc.release()
        if sent:
            log.info("forwarded %d file(s) to %s", sent, dest)
