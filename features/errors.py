"""Typed ingestion errors: one class per fault, each message names the fix.

Every data fault met by ``osteo ingest`` is raised as a subclass of
:class:`IngestError`. The orchestrator (:mod:`features.ingest`) catches it,
appends the item to ``quarantine.parquet`` with ``reason`` = the class name and
``detail`` = the message, and carries on. Messages name the item by its
pseudonymous id only (``study_id``, ``study_id:level``, ``dxa_id``): never an
MRN, accession number, UID, name or raw path (those are PHI).

Configuration problems that must stop the run (no pseudonym key, a broken
count invariant) derive from :class:`IngestSetupError` instead and are not
quarantined.
"""
from __future__ import annotations


class IngestError(Exception):
    """A data fault in one item; the item is quarantined and the run continues.

    Args:
        item: pseudonymous id of the faulty item (``study_id``, ``study_id:level``, ``dxa_id``).
        problem: what is wrong (no PHI).
        fix: what the user should do about it.
    """

    stage: str = "ingest"

    def __init__(self, item: str, problem: str, fix: str) -> None:
        self.item = item
        self.problem = problem
        self.fix = fix
        super().__init__(f"{item}: {problem}; fix: {fix}")


# --- files -----------------------------------------------------------------
class UnreadableFileError(IngestError):
    """A CT or mask file is missing, truncated or not a readable NIfTI/DICOM."""

    stage = "read"


class UnsupportedFormatError(IngestError):
    """``ct_format`` / ``mask_format`` names a format ingestion does not read."""

    stage = "read"


class MissingMaskError(IngestError):
    """A CT row has no vertebra mask and no segmenter was given (``osteo screen --segmenter``)."""

    stage = "read"


class SegmenterError(IngestError):
    """The segmenter command failed, timed out or wrote no mask."""

    stage = "read"


# --- DICOM series ----------------------------------------------------------
class GantryTiltError(IngestError):
    """Slices are stacked along a direction not orthogonal to their plane (tilted gantry)."""

    stage = "read"


class MixedSeriesError(IngestError):
    """A DICOM folder holds several series, orientations, slice sizes or duplicate positions."""

    stage = "read"


class NonUniformSpacingError(IngestError):
    """Slice positions are not equally spaced (missing slices or variable increment)."""

    stage = "read"


class UnsupportedTransferSyntaxError(IngestError):
    """The pixel data is encoded in a transfer syntax no installed decoder reads."""

    stage = "read"


class NoAxialSeriesError(IngestError):
    """The DICOM folder holds no axial CT image series (only scouts, reports, reformats ...)."""

    stage = "read"


# --- mask / image geometry -------------------------------------------------
class OrientationMismatchError(IngestError):
    """The mask's direction cosines differ from the CT's."""

    stage = "geometry"


class SpacingMismatchError(IngestError):
    """The mask's voxel spacing differs from the CT's."""

    stage = "geometry"


class ShapeMismatchError(IngestError):
    """The mask's array shape differs from the CT's."""

    stage = "geometry"


class MisalignedMaskError(IngestError):
    """The mask's origin is displaced from the CT's."""

    stage = "geometry"


# --- intensities -----------------------------------------------------------
class HUOutOfRangeError(IngestError):
    """CT values are not plausible Hounsfield units (e.g. rescale intercept not applied)."""

    stage = "intensity"


# --- labels ----------------------------------------------------------------
class NoVertebraError(IngestError):
    """The mask holds no thoracic or lumbar vertebra label."""

    stage = "labels"


class MissingLevelError(IngestError):
    """The labelled levels have a gap (e.g. L1, L3 without L2): the labelling is not trusted."""

    stage = "labels"


class TotalSegVersionError(IngestError):
    """A TotalSegmentator multilabel mask whose version (v1 or v2 label order) cannot be told apart."""

    stage = "labels"


class UnsupportedLevelError(IngestError):
    """A vertebra has no ordinal slot (VerSe T13): quarantined, its neighbours are kept."""

    stage = "labels"


class VertebraTooSmallError(IngestError):
    """The vertebral body (after stripping posterior elements) is absent or too small."""

    stage = "roi"


# --- patients / DXA --------------------------------------------------------
class UnknownPatientError(IngestError):
    """A CT or DXA row names a patient absent from (or invalid in) ``patients.csv``."""

    stage = "patients"


class IdentifierMismatchError(IngestError):
    """The DICOM PatientID / AccessionNumber differ from the export row (series filed under another study)."""

    stage = "patients"


class InvalidRecordError(IngestError):
    """A CT row with an unparsable date or flag."""

    stage = "patients"


class DuplicateStudyError(IngestError):
    """Two CT rows share an accession number; the later copies are quarantined."""

    stage = "patients"


class InvalidDXAValueError(IngestError):
    """BMD or T-score missing / non-physical, or region / date unparsable."""

    stage = "dxa"


class DuplicateDXAError(IngestError):
    """An exact copy of an earlier DXA measurement (kept: the first)."""

    stage = "dxa"


class ConflictingDXAError(IngestError):
    """Several DXA rows for the same patient, date and region disagree: all are quarantined."""

    stage = "dxa"


class DXAOutOfWindowError(IngestError):
    """No ingested CT of the same patient lies within ``ingest.dxa_window_days``."""

    stage = "dxa"


# --- run-stopping problems ---------------------------------------------------
class IngestSetupError(RuntimeError):
    """A problem with the run itself (not one item): the run stops."""


class PseudonymKeyError(IngestSetupError):
    """No usable HMAC key for pseudonymisation."""


class CountMismatchError(IngestSetupError):
    """``ingested + quarantined != seen`` for some kind: an item was dropped (a bug)."""


class RawExportError(IngestSetupError):
    """The raw export is missing a table or a required column."""
