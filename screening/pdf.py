"""One-page PDF report per patient (reportlab): levels, BMD with interval, T-scores per vendor, flag.

Contents, top to bottom: title and intended-use statement; the patient's
identifiers (from the source header at write time, :class:`PatientHeader`);
the patient decision (screen positive at the stored threshold); one table row
per measured level with, per DXA vendor, BMD [interval] (g/cm2), T-score and
WHO class; the excluded levels with their reasons; a sagittal thumbnail with
the measured (green) and excluded (red) levels marked; model name and version,
reference version, interval level and reviewer.

The file is written atomically and is byte-reproducible (reportlab's
``invariant`` mode: no creation timestamp), so re-rendering the same result
gives the same file.
"""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np

from screening.results import INTENDED_USE, PatientHeader, ReportInputError, StudyResult


def sagittal_thumbnail(ct: np.ndarray, levels: np.ndarray, spacing: tuple[float, float, float],
                       measured: set[int], excluded: set[int], names: Mapping[int, str],
                       window: tuple[float, float] = (-250.0, 1250.0)) -> bytes:
    """PNG of the mid-sagittal CT slice through the spine, levels labelled at their centroids.

    Args:
        ct: (X, Y, Z) HU, RAS.
        levels: (X, Y, Z) ordinal level mask on the same grid.
        spacing: (3,) mm.
        measured / excluded: ordinal levels drawn green / red.
        names: level -> label ("L1").
        window: HU display window (low, high).
    """
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    if ct.shape != levels.shape:
        raise ReportInputError(f"CT {ct.shape} and level mask {levels.shape} differ: pass the same grid")
    xs = np.nonzero(levels > 0)[0]
    x = int(np.median(xs)) if xs.size else ct.shape[0] // 2
    img = ct[x].T                                                  # (Z, Y): rows superior-inferior after flip
    extent = (0, ct.shape[1] * spacing[1], 0, ct.shape[2] * spacing[2])   # y (mm), z (mm)
    fig = Figure(figsize=(2.6, 3.6), dpi=150)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(img, cmap="gray", vmin=window[0], vmax=window[1], origin="lower", extent=extent, aspect="equal")
    for lv in sorted(measured | excluded):
        idx = np.argwhere(levels == lv)
        if idx.size == 0:
            continue
        cy, cz = idx[:, 1].mean() * spacing[1], idx[:, 2].mean() * spacing[2]
        color = "#d62728" if lv in excluded else "#2ca02c"
        ax.plot([cy], [cz], "o", ms=4, color=color)
        ax.annotate(names.get(lv, str(lv)) + (" excluded" if lv in excluded else ""), (extent[1], cz),
                    xytext=(3, 0), textcoords="offset points", color=color, fontsize=7, va="center",
                    fontweight="bold", annotation_clip=False)
    ax.set_axis_off()
    fig.subplots_adjust(right=0.62)
    ax.set_title("sagittal (anterior right)", fontsize=6)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _fmt(v: float | None, nd: int) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def render_pdf(result: StudyResult, patient: PatientHeader, thumbnail_png: bytes | None = None) -> bytes:
    """The report as PDF bytes (one A4 page)."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import Image, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    styles = getSampleStyleSheet()
    small = styles["BodyText"].clone("small", fontSize=8, leading=10)
    story = [Paragraph("Opportunistic CT bone density screening", styles["Title"]),
             Paragraph(f"<font color='#b00000'><b>{INTENDED_USE}</b></font>", small), Spacer(1, 3 * mm)]
    ident = [["Patient", patient.patient_name.replace("^", " ").strip(), "Patient ID", patient.patient_id],
             ["Birth date", patient.birth_date, "Sex", patient.sex],
             ["Accession", patient.accession, "Study date", patient.study_date]]
    t = Table(ident, colWidths=[25 * mm, 60 * mm, 25 * mm, 60 * mm])
    t.setStyle(TableStyle([("FONTSIZE", (0, 0), (-1, -1), 8), ("FONTNAME", (0, 0), (0, -1), "Helvetica-Bold"),
                           ("FONTNAME", (2, 0), (2, -1), "Helvetica-Bold"), ("BOTTOMPADDING", (0, 0), (-1, -1), 1)]))
    story += [t, Spacer(1, 3 * mm)]
    if result.screen_positive is None:
        decision = "No level could be measured: no screening result."
    else:
        word = "POSITIVE (refer for DXA)" if result.screen_positive else "negative"
        score = "" if result.score is None else f" (score {result.score:.2f}, threshold {_fmt(result.threshold, 2)})"
        decision = f"<b>Screen {word}</b>{score}"
    story += [Paragraph(decision, styles["Heading3"])]

    measured = [lv for lv in result.levels if not lv.excluded]
    vendors = list(dict.fromkeys(r.vendor for lv in measured for r in lv.readings))
    pct = f"{result.interval_level:.0%}"
    bold = small.clone("bold", fontName="Helvetica-Bold", fontSize=7, leading=8)
    head = ["Level"] + [h for v in vendors for h in (Paragraph(f"{v}<br/>BMD [{pct} interval] g/cm2", bold),
                                                     "T", "WHO")]
    rows = [head]
    for lv in measured:
        by = {r.vendor: r for r in lv.readings}
        row = [lv.name]
        for v in vendors:
            r = by.get(v)
            row += (["-", "-", "-"] if r is None else
                    [f"{r.bmd:.3f} [{r.lower:.3f}, {r.upper:.3f}]", _fmt(r.t_score, 1), r.who or "-"])
        rows.append(row)
    if len(rows) > 1:
        widths = [14 * mm] + [w for _ in vendors for w in (34 * mm, 10 * mm, 16 * mm)]
        table = Table(rows, colWidths=widths, repeatRows=1)
        table.setStyle(TableStyle([("FONTSIZE", (0, 0), (-1, -1), 7), ("FONTNAME", (0, 0), (-1, 0), "Helvetica-Bold"),
                                   ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
                                   ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8eef4"))]))
        story += [table]
    excluded = [lv for lv in result.levels if lv.excluded]
    if excluded:
        story += [Spacer(1, 2 * mm), Paragraph("<b>Excluded levels</b> (not in the patient decision)", small)]
        story += [Paragraph("; ".join(r if r.startswith(lv.name + ":") else f"{lv.name}: {r}" for _, r in lv.flags),
                            small) for lv in excluded]
    story += [Spacer(1, 3 * mm)]
    if thumbnail_png:
        story += [Image(io.BytesIO(thumbnail_png), width=52 * mm, height=72 * mm)]
    footer = (f"Model {result.model_name} version {result.model_version}; DXA references {result.reference_version}; "
              f"BMD intervals: split-conformal, {pct} coverage; reviewed by "
              f"{result.reviewer or 'nobody (no review required)'}.")
    story += [Spacer(1, 2 * mm), Paragraph(footer, small)]
    story += [Paragraph(n, small) for n in result.notes]
    buf = io.BytesIO()
    doc = SimpleDocTemplate(buf, pagesize=A4, leftMargin=15 * mm, rightMargin=15 * mm, topMargin=12 * mm,
                            bottomMargin=12 * mm, title="CT bone density screening report",
                            author="osteo-platform", invariant=1)
    pages: list[int] = []
    doc.build(story, onFirstPage=lambda c, d: pages.append(c.getPageNumber()),
              onLaterPages=lambda c, d: pages.append(c.getPageNumber()))
    if len(pages) != 1:
        raise ReportInputError(f"the report needs {len(pages)} pages: shorten the notes or the level list")
    return buf.getvalue()


def write_pdf(path: Path, result: StudyResult, patient: PatientHeader, thumbnail_png: bytes | None = None) -> Path:
    """Render and write atomically (temporary file in the same folder, then rename)."""
    data = render_pdf(result, patient, thumbnail_png)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".pdf-", suffix=".pdf")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
