"""PHI-shaped identifiers: fake names, MRNs, accession numbers, DICOM UIDs.

All identifiers are fake but shaped like hospital data so that ingestion's
pseudonymisation is exercised for real. They are deterministic functions of
(seed, site, patient index, exam index): the same cohort always carries the
same identifiers, and two patients never share an MRN.
"""
from __future__ import annotations

import hashlib
import zlib

import numpy as np

_FIRST_F = ("Anna", "Maria", "Elena", "Sofia", "Laura", "Julia", "Clara", "Ingrid", "Marta", "Helga",
            "Yuki", "Mei", "Aisha", "Fatima", "Olga", "Irina", "Grace", "Ruth", "Alice", "Nora")
_FIRST_M = ("Peter", "Jan", "Luca", "Marco", "Karl", "Hans", "Ivan", "Omar", "Ali", "Chen",
            "Hiroshi", "David", "Paul", "Georg", "Tomas", "Piotr", "Samuel", "Felix", "Oscar", "Leo")
_LAST = ("Muller", "Schmidt", "Rossi", "Garcia", "Novak", "Kowalski", "Jensen", "Tanaka", "Wang", "Li",
         "Silva", "Costa", "Dubois", "Martin", "Smith", "Brown", "Nielsen", "Horvath", "Popescu", "Yilmaz",
         "Weber", "Fischer", "Moreau", "Romano", "Larsen", "Ivanova", "Kim", "Park", "Nguyen", "Haddad")


def site_key(site: str) -> int:
    """Stable 32-bit key of a site name (independent of the order of sites in params)."""
    return zlib.crc32(site.encode("utf-8"))


def _scramble(n: int, modulus: int) -> int:
    """Bijection of [0, modulus) (multiplication by a unit), so distinct inputs stay distinct."""
    return (n * 7_654_321 + 1_234_567) % modulus


def fake_name(rng: np.random.Generator, sex: str) -> str:
    """DICOM-style person name ``Last^First``."""
    first = _FIRST_F if sex == "F" else _FIRST_M
    return f"{_LAST[rng.integers(len(_LAST))]}^{first[rng.integers(len(first))]}"


def mrn(site: str, index: int) -> str:
    """Medical record number: 9 digits, unique per (site, index) for < 10^5 patients per site."""
    return f"{_scramble((site_key(site) % 9973) * 100_000 + index, 1_000_000_000):09d}"


def accession(site: str, index: int, exam: int, kind: str = "CT") -> str:
    """Accession number (``CT`` or ``DX`` + 10 digits), unique per (site, patient, exam)."""
    base = ((site_key(site) % 9973) * 100_000 + index) * 20 + exam + (10 if kind != "CT" else 0)
    return f"{kind[:2].upper()}{_scramble(base, 10_000_000_000):010d}"


def dicom_uid(seed: int, *parts: object) -> str:
    """Deterministic DICOM UID under the 2.25 root (a 128-bit integer from a hash of the parts)."""
    digest = hashlib.sha256("|".join([str(seed), *map(str, parts)]).encode()).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"
