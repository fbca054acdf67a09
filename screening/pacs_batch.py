"""``osteo screen run --pacs URL``: one run against a PACS, from new CT series to SRs and PDFs stored back.

The pieces are :mod:`screening.pacs_sync` (state, export, STOW) and :func:`screening.batch.screen_folder`
(the same screening as a folder); this module puts them in the order that never loses a study:

1. :func:`begin`: reports of an earlier batch that were released but not yet stored (the PACS went away
   after screening, or a review was approved while it was down) are stored first; then the state file
   (``<out>/pacs_state-<digest of the URL>.json``), the new CT series, and their export into the batch's
   folder ``<out>/batches/<batch_id>/export`` (it holds PHI, like the reports; the pending review queue
   reads the source headers from it, so it stays with the batch);
2. the folder is screened (``--segmenter`` writes each study's mask: a PACS study has none; without it
   every study is quarantined with :class:`~features.errors.MissingMaskError` and the batch continues);
3. :func:`complete`: released reports go back via STOW-RS (SR + Encapsulated PDF in the source study);
   with ``screen.review: required`` they wait for ``osteo screen approve``, which stores them
   (:func:`store_approved`); then, and only then, the state file advances.

A crash or an unreachable PACS before step 3 ends leaves the state file where it was: the next run takes
the same series again (the ledger skips what was screened) and stores what was left undelivered.
``<batch>/pacs.json`` records the URL and the delivery state (``to_store`` | ``pending_review`` |
``stored``), counts only.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from osteo_config.screen import PacsConfig
from screening.pacs import PacsClient
from screening.pacs_sync import (ExportSummary, PacsState, advance_state, export_series, load_state,
                                 pending_series, save_state, store_reports)

log = logging.getLogger(__name__)

PACS_RECORD = "pacs.json"


def state_path(out_dir: Path, url: str) -> Path:
    """The state file of one PACS in an output folder (one per URL: two PACS never share a record)."""
    return Path(out_dir) / f"pacs_state-{hashlib.sha256(url.rstrip('/').encode()).hexdigest()[:12]}.json"


@dataclass
class PacsFetch:
    """What :func:`begin` found and exported (the batch folder is ``<out>/batches/<batch_id>``)."""

    url: str
    out_dir: Path
    batch_id: str
    export_dir: Path
    state: PacsState
    today: dt.date
    lookback_days: int
    timeout_s: float
    new_series: int = 0
    export: ExportSummary = field(default_factory=ExportSummary)
    redelivered: dict[str, int] = field(default_factory=lambda: {"batches": 0, "sr": 0, "pdf": 0})


@dataclass
class PacsRun:
    """One run's counts (no identifiers)."""

    url: str
    since: str
    new_series: int
    studies_exported: int
    batch: object | None                 # the BatchSummary, None when nothing was new
    stored: dict[str, int]
    delivery: str                        # stored | pending_review | nothing
    redelivered: dict[str, int]

    def format(self) -> str:
        head = (f"PACS {self.url}: {self.new_series} new CT series since {self.since}, "
                f"{self.studies_exported} studies exported")
        lines = [head]
        if self.redelivered["batches"]:
            lines.append(f"  stored {self.redelivered['sr']} SR + {self.redelivered['pdf']} PDF left over from "
                         f"{self.redelivered['batches']} earlier batch(es)")
        if self.batch is not None:
            lines.append(self.batch.format())
        lines.append({"stored": f"  stored back: {self.stored['sr']} SR + {self.stored['pdf']} Encapsulated PDF",
                      "pending_review": "  reports wait for `osteo screen approve` (stored back on approval)",
                      "nothing": "  nothing new to screen"}[self.delivery])
        return "\n".join(lines)


def _read_record(batch_dir: Path) -> dict | None:
    path = Path(batch_dir) / PACS_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def _write_record(batch_dir: Path, rec: dict) -> None:
    from screening.reports import write_json

    write_json(Path(batch_dir) / PACS_RECORD, rec)


def _deliver(client: PacsClient, batch_dir: Path, rec: dict) -> dict[str, int]:
    """STOW the batch's released reports; the record says ``stored`` once the PACS took them all."""
    stored = store_reports(client, Path(batch_dir) / "reports")
    _write_record(batch_dir, {**rec, "state": "stored", "stored": stored,
                              "stored_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    return stored


def begin(url: str, out_dir: Path, cfg: PacsConfig, batch_id: str, today: dt.date | None = None) -> PacsFetch:
    """Step 1: undelivered reports stored, then the new CT series exported into the batch's ``export/``.

    Raises:
        PacsUnreachableError: the PACS did not answer (the message names the URL); nothing was changed.
        PacsRequestError: the PACS refused a query, a retrieve or a store.
    """
    out_dir = Path(out_dir).resolve()
    today = today or dt.datetime.now(dt.timezone.utc).date()
    client = PacsClient(url, timeout_s=cfg.timeout_s)
    fetch = PacsFetch(url=url, out_dir=out_dir, batch_id=batch_id,
                      export_dir=out_dir / "batches" / batch_id / "export",
                      state=load_state(state_path(out_dir, url), today, cfg.lookback_days), today=today,
                      lookback_days=cfg.lookback_days, timeout_s=cfg.timeout_s)
    for bdir in sorted((out_dir / "batches").glob("*")) if (out_dir / "batches").is_dir() else []:
        rec = _read_record(bdir)
        if rec and rec.get("url") == url and rec.get("state") == "to_store":
            n = _deliver(client, bdir, rec)
            fetch.redelivered = {"batches": fetch.redelivered["batches"] + 1,
                                 "sr": fetch.redelivered["sr"] + n["sr"], "pdf": fetch.redelivered["pdf"] + n["pdf"]}
    refs = pending_series(client, fetch.state)
    fetch.new_series = len(refs)
    if refs:
        fetch.export = export_series(client, refs, fetch.export_dir)
    return fetch


def complete(fetch: PacsFetch, batch, review: str) -> PacsRun:
    """Step 3: store the released reports (or leave them for the review), then advance the state file.

    Args:
        fetch: what :func:`begin` returned.
        batch: the :class:`~screening.batch.BatchSummary` of the export, or None when nothing was new.
        review: ``screen.review`` (``required``: nothing is stored until ``osteo screen approve``).
    """
    client = PacsClient(fetch.url, timeout_s=fetch.timeout_s)
    stored, delivery = {"sr": 0, "pdf": 0}, "nothing"
    if batch is not None:
        bdir = Path(batch.batch_dir)
        rec = {"url": fetch.url, "batch_id": fetch.batch_id, "studies_exported": fetch.export.studies,
               "state": "pending_review" if review == "required" else "to_store"}
        _write_record(bdir, rec)                       # before the STOW: a failure there is retried next run
        if review == "required":
            delivery = "pending_review"
        else:
            stored, delivery = _deliver(client, bdir, rec), "stored"
    save_state(state_path(fetch.out_dir, fetch.url),
               advance_state(fetch.state, fetch.export.series, fetch.today, fetch.lookback_days))
    log.info("pacs run: %d new series, %d studies, stored %s", fetch.new_series, fetch.export.studies, stored)
    return PacsRun(url=fetch.url, since=fetch.state.since, new_series=fetch.new_series,
                   studies_exported=fetch.export.studies, batch=batch, stored=stored, delivery=delivery,
                   redelivered=fetch.redelivered)


def store_approved(batch_dir: Path, timeout_s: float = 60.0) -> dict[str, int] | None:
    """After ``osteo screen approve``: store a PACS batch's released reports (None: not a PACS batch).

    Raises:
        PacsUnreachableError: the PACS is down; the record says ``to_store`` and the next
            ``osteo screen run --pacs`` stores them.
    """
    rec = _read_record(batch_dir)
    if not rec or rec.get("state") not in ("pending_review", "to_store"):
        return None
    rec = {**rec, "state": "to_store"}
    _write_record(batch_dir, rec)
    return _deliver(PacsClient(rec["url"], timeout_s=timeout_s), batch_dir, rec)


def screen_pacs(url: str, out_dir: Path, *, pacs: PacsConfig, screen_export, batch_id: str,
                review: str, today: dt.date | None = None) -> PacsRun:
    """:func:`begin` -> ``screen_export(export_dir)`` (the folder screening) -> :func:`complete`.

    Args:
        screen_export: ``export_dir -> BatchSummary``: :func:`screening.batch.screen_folder` on the export
            with ``batch_id`` (the caller binds its configuration; the flow passes its mapped version).
    """
    fetch = begin(url, out_dir, pacs, batch_id, today)
    batch = screen_export(fetch.export_dir) if fetch.export.studies else None
    return complete(fetch, batch, review)
