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
else the file ``ingest.key_file``; else, only when ``ingest.allow_demo_key``
is true *and* the profile is ``demo`` or ``tiny``, the public
:data:`DEMO_KEY` (synthetic data only). Otherwise :class:`PseudonymKeyError`.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from features.errors import PseudonymKeyError

ID_HEX_CHARS = 20
MIN_KEY_BYTES = 16
DEMO_KEY = b"osteo-platform-public-demo-key-not-secret"
DEMO_PROFILES = frozenset({"demo", "tiny"})

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


def load_key(key_env: str, key_file: str | Path, allow_demo_key: bool, profile: str) -> tuple[bytes, str]:
    """Find the HMAC key.

    Args:
        key_env: environment variable name.
        key_file: key file path (``~`` expanded); its stripped content is the key.
        allow_demo_key: allow the public demo key ...
        profile: ... but only for profiles in :data:`DEMO_PROFILES`.

    Returns:
        (key bytes, source) with source ``env``, ``file`` or ``demo``.

    Raises:
        PseudonymKeyError: no key, or a key shorter than :data:`MIN_KEY_BYTES`.
    """
    howto = _HOWTO.format(env=key_env)
    value = os.environ.get(key_env, "").strip() if key_env else ""
    if value:
        key, source = value.encode("utf-8"), "env"
    else:
        path = Path(str(key_file)).expanduser() if key_file else None
        if path is not None and path.is_file():
            key, source = path.read_bytes().strip(), "file"
        elif allow_demo_key and profile in DEMO_PROFILES:
            return DEMO_KEY, "demo"
        else:
            why = ("the demo key is only allowed for profiles demo/tiny with ingest.allow_demo_key: true"
                   if allow_demo_key else "ingest.allow_demo_key is false")
            raise PseudonymKeyError(
                f"no pseudonymisation key: ${key_env} is unset and {key_file} does not exist ({why}); {howto}")
    if len(key) < MIN_KEY_BYTES:
        raise PseudonymKeyError(f"the pseudonymisation key from {source} has {len(key)} bytes "
                                f"(minimum {MIN_KEY_BYTES}); {howto}")
    return key, source
