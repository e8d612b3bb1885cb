"""Deterministic DICOM UIDs for the objects written back to the hospital.

``2.25.<decimal UUID>`` (ISO/IEC 9834-8, no organisation root needed), the UUID a version-5 hash
of its parts. Scoring the same source image with the same weights again yields the same SR and
SC UIDs, so a resend or a rerun replaces the earlier object in the PACS instead of adding a copy.
"""

from __future__ import annotations

import uuid

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:precise-baa:dicom-results")


def derived_uid(*parts: object) -> str:
    """A UID that is a pure function of ``parts`` (at most 44 characters)."""
    return f"2.25.{uuid.uuid5(_NAMESPACE, '|'.join(str(p) for p in parts)).int}"
