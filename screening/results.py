"""What one screened study says, per level and per patient: the input of the SR and PDF writers.

Plain frozen data, no identifiers: the writers add the patient's real identifiers from the
source DICOM header (or the export's CSV) at write time, and only there.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from osteo_config.screen import INTENDED_USE  # noqa: F401  (one statement for reports and model cards)
from screening.quality import level_name


@dataclass(frozen=True)
class VendorResult:
    """One level as one DXA vendor would report it."""

    vendor: str              # "Hologic" | "GE Lunar" | "MEDIX"
    bmd: float               # predicted areal BMD on the vendor's scale (g/cm2)
    lower: float             # split-conformal interval bounds (g/cm2)
    upper: float
    t_score: float | None    # None where the level has no DXA reference (outside L1-L4)
    who: str | None          # "normal" | "osteopenia" | "osteoporosis"
    sbmd: float | None = None  # standardised BMD (g/cm2)


@dataclass(frozen=True)
class LevelResult:
    """One vertebra: per-vendor readings, or the reasons it was excluded."""

    level: int                                    # ordinal 1..18 (T1..L6)
    readings: tuple[VendorResult, ...] = ()
    flags: tuple[tuple[str, str], ...] = ()       # (FlagKind value, reason); non-empty -> excluded

    @property
    def name(self) -> str:
        return level_name(self.level)

    @property
    def excluded(self) -> bool:
        return bool(self.flags)


@dataclass(frozen=True)
class StudyResult:
    """One screened study (pseudonymous; identifiers come from the source at write time)."""

    levels: tuple[LevelResult, ...]
    model_name: str                          # registered model name
    model_version: str                       # registered version (or run id)
    reference_version: str                   # screen.references.version
    interval_level: float                    # e.g. 0.90
    screen_positive: bool | None             # patient flag at the stored threshold; None: no level measured
    score: float | None = None               # patient score compared with the threshold
    threshold: float | None = None           # the threshold stored with the model version
    reviewer: str | None = None              # who released the report (screen.review: required)
    notes: tuple[str, ...] = field(default_factory=tuple)


class ReportInputError(ValueError):
    """The source header or the study result cannot make a report (the message says what to fix)."""


@dataclass(frozen=True)
class PatientHeader:
    """The identifiers a clinician's report carries, read from the source at write time."""

    patient_name: str
    patient_id: str
    birth_date: str          # as in the source (DICOM DA, YYYYMMDD)
    sex: str
    accession: str
    study_date: str
    study_uid: str
    series_uid: str

    @classmethod
    def from_dicom(cls, ds: Dataset) -> "PatientHeader":
        """From one source CT header (PatientName, PatientID, ... StudyInstanceUID, SeriesInstanceUID)."""
        missing = [k for k in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID") if not getattr(ds, k, None)]
        if missing:
            raise ReportInputError(f"source DICOM header lacks {missing}: pass the original CT header, "
                                   "not a pseudonymised copy")
        return cls(patient_name=str(getattr(ds, "PatientName", "")), patient_id=str(ds.PatientID),
                   birth_date=str(getattr(ds, "PatientBirthDate", "")), sex=str(getattr(ds, "PatientSex", "")),
                   accession=str(getattr(ds, "AccessionNumber", "")), study_date=str(getattr(ds, "StudyDate", "")),
                   study_uid=str(ds.StudyInstanceUID), series_uid=str(ds.SeriesInstanceUID))
