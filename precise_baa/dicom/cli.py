"""The ``serve`` command: a DICOM node scoring what it receives (argparse only here)."""

from __future__ import annotations

import sys


def add_commands(sub) -> None:
    from ..batch.cli import _pipeline_args
    from ..cli import handler

    s = sub.add_parser(
        "serve", help="a DICOM node: receive radiographs (C-STORE), score them, send SR + SC on",
        description="Run a DICOM Storage SCP (C-STORE, C-ECHO). Received radiographs are kept in "
                    "OUT/inbox/ before they are acknowledged, scored in batches with the pipeline "
                    "loaded once, written as `score` writes them (results.csv, assessments.jsonl, "
                    "report.html) plus OUT/dicom/ID_sr.dcm and ID_sc.dcm, and with --forward sent "
                    "to a PACS. Stop with SIGTERM or Ctrl-C: the current batch is finished; what "
                    "was received and not yet scored is scored at the next start.")
    s.add_argument("--out", required=True, help="output folder (inbox/, dicom/, results)")
    s.add_argument("--port", type=int, default=11112, help="port to listen on (default 11112)")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 for all)")
    s.add_argument("--ae-title", default="PRECISE_BAA",
                   help="the node's AE title; associations calling another title are rejected "
                        "(default PRECISE_BAA)")
    s.add_argument("--forward", default=None, metavar="AE@HOST:PORT",
                   help="C-STORE every SR and SC to this destination (e.g. the PACS)")
    s.add_argument("--batch-size", type=int, default=4, help="radiographs per model batch (default 4)")
    s.add_argument("--no-pictures", action="store_true",
                   help="skip overlays, thumbnails, plots and report.html (SC images are still made)")
    s.add_argument("--verbose", action="store_true", help="also log pynetdicom's protocol messages")
    _pipeline_args(s)
    s.set_defaults(func=handler("precise_baa.dicom.cli:cmd_serve"))


def cmd_serve(args) -> int:
    import logging

    from ..batch.cli import _build
    from .node import Destination, DicomNode

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.INFO if args.verbose else logging.WARNING)
    forward = Destination.parse(args.forward) if args.forward else None
    log = logging.getLogger("precise_baa.dicom.node")

    def load():
        pipe = _build(args)
        log.info("pipeline loaded: %s", ", ".join(f"{m.stage}={m.implementation}" for m in pipe.models))
        if pipe.phantom_trained:
            log.warning("these weights are phantom-trained (synthetic radiographs only): results "
                        "are not clinical")
        return pipe

    node = DicomNode(load, args.out, ae_title=args.ae_title, host=args.host, port=args.port,
                     forward=forward, batch_size=args.batch_size, pictures=not args.no_pictures)
    node.serve_forever()
    return 0
