"""Keyed pseudonymisation: HMAC-SHA256 ids and a per-patient date shift.

* ``patient_id = HMAC(key, "patient:" + MRN)``, ``study_id = HMAC(key, "study:" + accession)``,
  ``dxa_id = HMAC(key, "dxa:" + accession + ":" + region)``; hex, first
  :data:`ID_HEX_CHARS` characters (80 bits: collision-free at any cohort size).
  Without the key the ids can neither be reversed nor recomputed from an MRN
  (unlike a plain hash, which is open to a dictionary attack on MRNs).
* The date shift of a patient is ``HMAC(key, "dateshift:" + MRN)`` mapped to a
  whole number of days in ``[-max, +max]``: every date of that patient (CT,
  DXA, birth) moves by the same offset, so intervals (CT<->DXA, age) survive.
* Kept: ``sex``, ``age_at_ct`` (years, from the *true* dates), and
  ``birth_year`` of the *shifted* birth date (a true birth year together with
  a shifted CT date and the age would reveal the shift). Dropped: names, MRNs,
  accession numbers, UIDs, raw paths, full dates.

Key lookup (:func:`load_key`): the environment variable ``ingest.key_env``,
else the file ``ingest.key_file`` (mode 0600, never group/world readable); else,
only when ``ingest.allow_demo_key`` is true *and* the export carries the marker
the simulator writes (:data:`SYNTHETIC_MARKER`, whose table hashes match the
export: a marker copied beside a hospital export does not verify), the public
:data:`DEMO_KEY`. Otherwise :class:`PseudonymKeyError`. A real key must hold at
least :data:`MIN_KEY_BYTES` bytes and :data:`MIN_KEY_BITS` bits of estimated entropy
(``secrets.token_hex(32)`` gives 256).

Key continuity (:func:`check_fingerprint`): the key's fingerprint (an HMAC of a
constant: it identifies the key without revealing it) is recorded on the first
ingestion of a workspace and every later ingestion must present the same key: a
rotated or lost key would otherwise silently re-key every patient.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import stat
from collections import Counter
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from features import atomic
from features.errors import PseudonymKeyError

ID_HEX_CHARS = 20
MIN_KEY_BYTES = 32
MIN_KEY_BITS = 128          # estimated entropy: byte-frequency Shannon entropy x length
DEMO_KEY = b"osteo-platform-public-demo-key-not-secret"
# Written by the simulator (cohort/writers.py) beside its export: {"generator", "tables_sha256": {file: sha256}}
SYNTHETIC_MARKER = "SYNTHETIC_COHORT.json"
MARKED_TABLES = ("patients.csv", "ct_studies.csv", "dxa.csv")

_HOWTO = ("create a key with `mkdir -p ~/.config/osteo && python -c \"import secrets; "
          "print(secrets.token_hex(32))\" > ~/.config/osteo/pseudonym.key && chmod 600 "
          "~/.config/osteo/pseudonym.key` (or export {env}=<secret>), keep it outside the repository "
          "and back it up: without it, ids cannot be linked to new exports")


@dataclass(frozen=True)
class Pseudonymizer:
    """HMAC-based ids and date shifts for one key.

    Attributes:
        key: secret HMAC key (never logged, never written).
        date_shift_max_days: shifts are drawn from ``[-max, +max]`` days.
        key_source: ``env`` | ``file`` | ``demo`` (safe to log).
    """

    key: bytes
    date_shift_max_days: int
    key_source: str = "env"

    def __repr__(self) -> str:  # never print the key
        return f"Pseudonymizer(key_source={self.key_source!r}, date_shift_max_days={self.date_shift_max_days})"

    def _mac(self, text: str) -> str:
        return hmac.new(self.key, text.encode("utf-8"), hashlib.sha256).hexdigest()

    def patient_id(self, mrn: str) -> str:
        """Pseudonymous patient id of an MRN."""
        return self._mac(f"patient:{str(mrn).strip()}")[:ID_HEX_CHARS]

    def study_id(self, accession: str) -> str:
        """Pseudonymous study id of an accession number."""
        return self._mac(f"study:{str(accession).strip()}")[:ID_HEX_CHARS]

    def dxa_id(self, accession: str, region: str) -> str:
        """Pseudonymous id of one DXA measurement (accession + region)."""
        return self._mac(f"dxa:{str(accession).strip()}:{str(region).strip()}")[:ID_HEX_CHARS]

    def shift_days(self, mrn: str) -> int:
        """The patient's date shift in days, uniform on ``[-max, +max]``."""
        span = 2 * int(self.date_shift_max_days) + 1
        return int(self._mac(f"dateshift:{str(mrn).strip()}"), 16) % span - int(self.date_shift_max_days)

    def shift(self, mrn: str, day: date) -> date:
        """``day`` moved by the patient's shift."""
        return day + timedelta(days=self.shift_days(mrn))


def age_years(birth: date, on: date) -> float:
    """Age in years (days / 365.25) on a date; the same on true or equally shifted dates."""
    return (on - birth).days / 365.25


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_synthetic_export(raw_dir: str | Path | None) -> bool:
    """True when ``raw_dir`` holds the simulator's marker and every marked table still has its recorded hash."""
    if raw_dir is None:
        return False
    marker = Path(raw_dir) / SYNTHETIC_MARKER
    try:
        recorded = json.loads(marker.read_text()).get("tables_sha256") or {}
    except (OSError, ValueError, AttributeError):
        return False
    return set(recorded) == set(MARKED_TABLES) and all(
        (Path(raw_dir) / name).is_file() and _sha256(Path(raw_dir) / name) == digest
        for name, digest in recorded.items())


def key_bits(key: bytes) -> float:
    """Estimated entropy of a key in bits (byte-frequency Shannon entropy times its length)."""
    if not key:
        return 0.0
    n = len(key)
    return -n * sum(c / n * math.log2(c / n) for c in Counter(key).values())


def key_fingerprint(key: bytes) -> str:
    """A 16-hex identifier of the key (HMAC of a constant: safe to log and store, reveals nothing)."""
    return hmac.new(key, b"osteo-platform:key-fingerprint", hashlib.sha256).hexdigest()[:16]


def check_fingerprint(key: bytes, record: str | Path) -> str:
    """Record the key's fingerprint in ``record`` on first use; refuse a different key afterwards.

    Returns:
        The fingerprint.

    Raises:
        PseudonymKeyError: ``record`` holds another key's fingerprint.
    """
    record, fp = Path(record), key_fingerprint(key)
    if record.is_file():
        known = json.loads(record.read_text()).get("fingerprint")
        if known != fp:
            raise PseudonymKeyError(
                f"the pseudonymisation key (fingerprint {fp}) is not the key this workspace was ingested with "
                f"(fingerprint {known}, recorded in {record}): restore the original key; only to re-key every "
                f"patient deliberately (new ids, new date shifts, a new workspace), delete {record}")
        return fp
    atomic.write_text(record, json.dumps({"fingerprint": fp}) + "\n")
    return fp


def _periodic(key: bytes) -> bool:
    """The key repeats a shorter block (``abcabc...``): its entropy estimate would overstate it."""
    n = len(key)
    return any(n % p == 0 and key == key[:p] * (n // p) for p in range(1, n // 2 + 1))


def _check_strength(key: bytes, source: str, howto: str) -> None:
    if len(key) < MIN_KEY_BYTES or key_bits(key) < MIN_KEY_BITS or _periodic(key):
        raise PseudonymKeyError(f"the pseudonymisation key from {source} is too weak ({len(key)} bytes, "
                                f"~{key_bits(key):.0f} bits{', a repeated block' if _periodic(key) else ''}; minimum "
                                f"{MIN_KEY_BYTES} bytes and {MIN_KEY_BITS} bits of entropy); {howto}")


def load_key(key_env: str, key_file: str | Path, allow_demo_key: bool, raw_dir: str | Path | None) -> tuple[bytes, str]:
    """Find the HMAC key.

    Args:
        key_env: environment variable name.
        key_file: key file path (``~`` expanded); its stripped content is the key; mode must be 0600.
        allow_demo_key: allow the public demo key ...
        raw_dir: ... but only for the simulator's own export (:func:`is_synthetic_export`).

    Returns:
        (key bytes, source) with source ``env``, ``file`` or ``demo``.

    Raises:
        PseudonymKeyError: no key, a weak key, or a key file others can read.
    """
    howto = _HOWTO.format(env=key_env)
    value = os.environ.get(key_env, "").strip() if key_env else ""
    if value:
        key, source = value.encode("utf-8"), "env"
    else:
        path = Path(str(key_file)).expanduser() if key_file else None
        if path is not None and path.is_file():
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                raise PseudonymKeyError(f"the key file {path} is readable by others (mode {mode:04o}): "
                                        f"`chmod 600 {path}`")
            key, source = path.read_bytes().strip(), "file"
        elif allow_demo_key and is_synthetic_export(raw_dir):
            return DEMO_KEY, "demo"
        else:
            why = ("the demo key is only for the simulator's own export (its SYNTHETIC_COHORT.json marker "
                   "is missing or does not match the tables)" if allow_demo_key else "ingest.allow_demo_key is false")
            raise PseudonymKeyError(
                f"no pseudonymisation key: ${key_env} is unset and {key_file} does not exist ({why}); {howto}")
    _check_strength(key, source, howto)
    return key, source
