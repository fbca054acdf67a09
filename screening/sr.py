"""DICOM Structured Report of one screened study: TID 1500 Measurement Report (highdicom).

Layout (DICOM PS3.16 TID 1500 -> TID 1501 per vertebra):

- Observation context: the model as a *device* observer (name, version) and, when
  the report was reviewed, the reviewer as a *person* observer (also the SR's
  verifying observer).
- One measurement group per vertebra (tracking identifier = level name, finding
  site = the SNOMED vertebra code; L6 has none, so the generic "Vertebra"):
  per DXA vendor (the measurement's *method*), the predicted areal BMD (g/cm2)
  with its lower/upper uncertainty (TID 310, from the split-conformal interval)
  and explicit interval bounds, the T-score against that vendor's reference, and
  per quality flag a qualitative evaluation; "Excluded from patient decision"
  Yes/No. The algorithm identification (model name, version) is on every group.
- One group for the patient: screen positive Yes/No at the stored threshold.

References: the SR's evidence is the source CT series (Current Requested
Procedure Evidence: Study / Series / SOP instance UIDs). Patient module
(name, ID, birth date, sex) and study (StudyInstanceUID, accession) are copied
by highdicom from the source headers passed in at write time: the only place
real identifiers enter a screening output.

Codes that no standard vocabulary defines here use the private scheme
``99OSTEO`` (DICOM's convention for local schemes: designators starting "99").
"""
from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from screening.results import LevelResult, ReportInputError, StudyResult
from screening.quality import level_name

SCHEME = "99OSTEO"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
BMD = hd.sr.CodedConcept("BMD-PRED", SCHEME, "Predicted areal BMD (DXA-equivalent)")
BMD_LOW = hd.sr.CodedConcept("BMD-LO", SCHEME, "Predicted BMD interval lower bound")
BMD_HIGH = hd.sr.CodedConcept("BMD-HI", SCHEME, "Predicted BMD interval upper bound")
T_SCORE = hd.sr.CodedConcept("T-PRED", SCHEME, "Predicted T-score")
FINDING = hd.sr.CodedConcept("OPP-BMD", SCHEME, "Opportunistic CT bone mineral density")
QUALITY_FLAG = hd.sr.CodedConcept("QFLAG", SCHEME, "Quality flag")
EXCLUDED = hd.sr.CodedConcept("EXCL", SCHEME, "Excluded from patient decision")
SCREEN_POSITIVE = hd.sr.CodedConcept("SCREEN-POS", SCHEME, "Screen positive for osteoporosis")
G_CM2 = hd.sr.CodedConcept("g/cm2", "UCUM", "gram per square centimeter")
NO_UNIT = hd.sr.CodedConcept("1", "UCUM", "no units")
YES, NO = codes.SCT.Yes, hd.sr.CodedConcept("373067005", "SCT", "No")
FLAG_CODES = {"label_order": "Label order implausible", "suspected_fracture": "Suspected vertebral fracture",
              "metal": "Metal or hardware in the body", "partial_coverage": "Body partly outside the field of view"}


def vendor_method(vendor: str) -> hd.sr.CodedConcept:
    """The measurement's method: 'as <vendor> DXA would read' (code value <= 16 chars)."""
    value = "AS-" + "".join(ch for ch in vendor.upper() if ch.isalnum())[:13]
    return hd.sr.CodedConcept(value, SCHEME, f"As a {vendor} DXA would read")


def finding_site(level: int) -> hd.sr.FindingSite:
    code = getattr(codes.SCT, f"{level_name(level)}Vertebra", None) or codes.SCT.Vertebra
    return hd.sr.FindingSite(anatomic_location=code)


def dicom_person_name(name: str) -> str:
    """A reviewer's name as DICOM PN: 'Family^Given' kept; free text becomes one component ('Dr. A. Reviewer^')."""
    name = name.strip()
    if not name:
        raise ReportInputError("reviewer name is empty: pass --reviewer 'Family^Given'")
    return name if "^" in name else name + "^"


def _check_source(source: Sequence[Dataset]) -> None:
    if not source:
        raise ReportInputError("no source CT headers: pass the series' DICOM headers (pydicom.dcmread(..., "
                               "stop_before_pixels=True)) to reference them")
    studies = {str(d.StudyInstanceUID) for d in source}
    series = {str(d.SeriesInstanceUID) for d in source}
    modalities = {str(getattr(d, "Modality", "")) for d in source}
    if len(studies) != 1 or len(series) != 1 or modalities != {"CT"}:
        raise ReportInputError(f"source must be one CT series; got {len(studies)} studies, {len(series)} series, "
                               f"modalities {sorted(modalities)}: pass the headers of the screened series only")


# Type 2 attributes of the Patient / General Study modules the SR copies from its evidence:
# present-but-empty is valid DICOM, absent is not (some exports drop them).
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _with_type2(source: Sequence[Dataset]) -> list[Dataset]:
    out = []
    for ds in source:
        if all(k in ds for k in _TYPE2):
            out.append(ds)
            continue
        c = copy.deepcopy(ds)
        for k in _TYPE2:
            if k not in c:
                setattr(c, k, "")
        out.append(c)
    return out


def _group(lv: LevelResult, result: StudyResult, algorithm: hd.sr.AlgorithmIdentification
           ) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    measurements = []
    for r in lv.readings:
        method = vendor_method(r.vendor)
        props = hd.sr.MeasurementProperties(upper_measurement_uncertainty=float(r.upper - r.bmd),
                                            lower_measurement_uncertainty=float(r.bmd - r.lower))
        measurements += [hd.sr.Measurement(name=BMD, value=float(r.bmd), unit=G_CM2, method=method, properties=props),
                         hd.sr.Measurement(name=BMD_LOW, value=float(r.lower), unit=G_CM2, method=method),
                         hd.sr.Measurement(name=BMD_HIGH, value=float(r.upper), unit=G_CM2, method=method)]
        if r.t_score is not None:
            measurements.append(hd.sr.Measurement(name=T_SCORE, value=float(r.t_score), unit=NO_UNIT, method=method))
    evaluations = [hd.sr.QualitativeEvaluation(QUALITY_FLAG, hd.sr.CodedConcept(kind.upper()[:16], SCHEME,
                                                                                FLAG_CODES.get(kind, kind)[:64]))
                   for kind, _ in lv.flags]
    evaluations.append(hd.sr.QualitativeEvaluation(EXCLUDED, YES if lv.excluded else NO))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(entropy_srcs=[result.model_version, lv.name,
                                                                                      "tracking"]),
                                                      identifier=lv.name),
        finding_type=FINDING, finding_sites=[finding_site(lv.level)], algorithm_id=algorithm,
        measurements=measurements or None, qualitative_evaluations=evaluations)


def build_sr(source: Sequence[Dataset], result: StudyResult, *, series_number: int = 990,
             institution: str | None = None) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 SR of one study, referencing the source CT series.

    Args:
        source: the source CT series' headers (one per instance), read at write time:
            the SR copies the patient's and study's identifiers from them.
        result: per-level results, model name/version, reviewer.
        series_number: SeriesNumber of the SR series.
        institution: InstitutionName of the SR (None: the source's).

    Returns:
        the SR dataset (highdicom ``Comprehensive3DSR``, a pydicom Dataset).

    Raises:
        ReportInputError: the source is not one CT series.
    """
    _check_source(source)
    source = _with_type2(source)
    study_uid, series_uid = str(source[0].StudyInstanceUID), str(source[0].SeriesInstanceUID)
    model = f"{result.model_name} v{result.model_version}"
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=[result.model_name, result.model_version, "device"]),
            name=result.model_name[:64], manufacturer_name="osteo-platform", model_name=model[:64]))
    person, reviewer = None, dicom_person_name(result.reviewer) if result.reviewer else None
    if reviewer:
        person = hd.sr.ObserverContext(observer_type=codes.DCM.Person,
                                       observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                                           name=reviewer))
    context = hd.sr.ObservationContext(observer_person_context=person, observer_device_context=device)
    algorithm = hd.sr.AlgorithmIdentification(name=result.model_name[:64], version=str(result.model_version)[:64])
    groups = [_group(lv, result, algorithm) for lv in result.levels]
    if result.screen_positive is not None:
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=generate_uid(entropy_srcs=[study_uid, result.model_version, "patient"]), identifier="patient"),
            finding_type=FINDING, algorithm_id=algorithm,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(SCREEN_POSITIVE,
                                                                 YES if result.screen_positive else NO)]))
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
                                     imaging_measurements=groups)
    # deterministic UIDs: the same model version re-screening the same series writes the same SR instance
    seed = [study_uid, series_uid, result.model_name, result.model_version, result.reviewer or ""]
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(source), content=report, series_instance_uid=generate_uid(entropy_srcs=seed + ["series"]),
        series_number=series_number, sop_instance_uid=generate_uid(entropy_srcs=seed + ["sop"]), instance_number=1,
        manufacturer="osteo-platform", is_complete=True, is_final=result.reviewer is not None,
        is_verified=result.reviewer is not None,
        verifying_observer_name=reviewer,
        verifying_organization=(institution or str(getattr(source[0], "InstitutionName", "")) or "site")
        if result.reviewer else None,
        institution_name=institution or getattr(source[0], "InstitutionName", None),
        series_description=f"Opportunistic BMD screening ({model}; research use, not a diagnostic device)"[:64])
    scheme = Dataset()                   # declare the private scheme (SOP Common module)
    scheme.CodingSchemeDesignator, scheme.CodingSchemeName = SCHEME, "osteo-platform screening codes"
    scheme.CodingSchemeResponsibleOrganization = "osteo-platform"
    sr.CodingSchemeIdentificationSequence = [scheme]
    sr.SoftwareVersions = [model[:64], f"references {result.reference_version}"[:64]]
    return sr


def write_sr(path: Path, source: Sequence[Dataset], result: StudyResult, **kw) -> Path:
    """Build the SR and write it atomically (temporary file in the same folder, then rename)."""
    sr = build_sr(source, result, **kw)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".sr-", suffix=".dcm")
    os.close(fd)
    try:
        sr.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
