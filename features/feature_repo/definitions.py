"""Feast definitions of the osteo feature repository, read top to bottom.

    Entity (who/what a row is about)
      -> Source (a Feast-ready parquet written by features.store.prepare_tables)
        -> FeatureView (typed schema, event timestamp, TTL)
          -> FeatureService (a model's versioned input contract)

Keys. A vertebra is identified by ONE string join key,
``vertebra_id = "<patient_id>:<study_id>:<level>"`` (level as an integer 1-18),
rather than a compound (patient_id, study_id, level) key: online look-ups
(SQLite, Redis) then take one short key, Redis keys stay readable, and the
id is rebuilt from the contract's three columns by
:func:`features.store.vertebra_id`. DXA labels are keyed by the compound
(patient_id, level): a DXA measures a patient's lumbar level, not one CT.

The views depend on run-time facts (the pairing window from params, the
radiomics columns the texture stage produced), so they are built by
functions from a :class:`RepoSpec` instead of module globals; building them
has no side effects. ``features.store`` applies them.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Bool, Float64, Int64, String, UnixTimestamp

# Names other packages rely on (docs/data_contract.md §5).
CT_VIEW = "ct_vertebra"
DXA_VIEW = "dxa_label"
DXA_MIRROR_VIEW = "dxa_label_mirror"
TRAINING_SERVICE = "osteo_training_v1"
SCREENING_SERVICE = "osteo_screening_v1"

# Feast-ready tables, relative to the runtime repository directory.
CT_TABLE = "data/ct_vertebra.parquet"
DXA_TABLE = "data/dxa_label.parquet"
EVENT_TS = "event_timestamp"        # CT date (CT view) / DXA date (label view)
MIRROR_TS = "mirror_timestamp"      # m(DXA date), see features.pit.mirror_time

FEAST_TYPES = {"String": String, "Int64": Int64, "Float64": Float64, "Bool": Bool,
               "UnixTimestamp": UnixTimestamp}

# DXA label columns (the label view's schema is fixed by the data contract §2).
DXA_FIELDS: tuple[tuple[str, str], ...] = (
    ("dxa_id", "String"),           # HMAC of accession + region; the last tie-break of the pairing rule
    ("dxa_date", "UnixTimestamp"),  # exam date (shifted, UTC), kept as a feature to compute |dt|
    ("dxa_site", "String"),         # site of the DXA device (contract column `site`)
    ("device_vendor", "String"),    # Hologic / GE Lunar / MEDIX / ...: vendor reference curves differ
    ("device_model", "String"),
    ("region", "String"),           # L1..L4 or L1-L4
    ("bmd_g_cm2", "Float64"),       # areal BMD, g/cm^2 (regression target)
    ("t_score", "Float64"),         # vendor T-score, SD
    ("who_class", "Int64"),         # 0 normal, 1 osteopenia (-2.5 < T < -1), 2 osteoporosis (T <= -2.5)
)


@dataclass(frozen=True)
class RepoSpec:
    """What the definitions need to know at apply time.

    Attributes:
        window_days: CT/DXA pairing window (days, either direction); the label views' TTL.
        ct_ttl_days: TTL of the CT view (days); large, since a vertebra's features do not expire,
            and it is where ``materialize_incremental`` starts on a fresh store.
        ct_fields: (name, Feast type name) of every CT feature column, read from the prepared
            parquet (radiomics columns vary with ``texture.scalar_features``).
        ct_schema_sha256: hash of ``ct_fields``; tagged on the services so a model can tell
            which feature set it was trained on.
    """

    window_days: int
    ct_ttl_days: int
    ct_fields: tuple[tuple[str, str], ...]
    ct_schema_sha256: str


# --- Entities --------------------------------------------------------------
def entities() -> tuple[Entity, Entity, Entity]:
    """The three entities: patient, vertebra (one CT vertebra) and spine level."""
    patient = Entity(
        name="patient", join_keys=["patient_id"], value_type=ValueType.STRING,
        description="Pseudonymous patient: HMAC-SHA256 hex of the MRN; no PHI.")
    vertebra = Entity(
        name="vertebra", join_keys=["vertebra_id"], value_type=ValueType.STRING,
        description="One vertebra on one CT: '<patient_id>:<study_id>:<level>' (single string key).")
    spine_level = Entity(
        name="spine_level", join_keys=["level"], value_type=ValueType.INT64,
        description="Vertebral level 1-18 (T1..T12 = 1..12, L1..L6 = 13..18); DXA: 13-16, 0 = L1-L4 total.")
    return patient, vertebra, spine_level


# --- Sources ---------------------------------------------------------------
def sources() -> tuple[FileSource, FileSource, FileSource]:
    """File sources over the prepared parquet tables (local files = the offline store)."""
    ct = FileSource(
        name="ct_vertebra_source", path=CT_TABLE, file_format=ParquetFormat(), timestamp_field=EVENT_TS,
        description="vertebrae.parquet + texture.parquet + radiomics.parquet, one row per CT vertebra.")
    dxa = FileSource(
        name="dxa_label_source", path=DXA_TABLE, file_format=ParquetFormat(), timestamp_field=EVENT_TS,
        description="dxa.parquet, de-duplicated per (patient, level, date); event time = DXA date.")
    # Same rows, time mirrored: Feast's backward join on this source finds the
    # nearest DXA *after* a CT (features.pit explains the construction).
    dxa_mirror = FileSource(
        name="dxa_label_mirror_source", path=DXA_TABLE, file_format=ParquetFormat(), timestamp_field=MIRROR_TS,
        description="dxa.parquet with event time m(DXA date) = P - (date - E): the forward look-up.")
    return ct, dxa, dxa_mirror


# --- Feature views ---------------------------------------------------------
def ct_vertebra_view(spec: RepoSpec, vertebra: Entity, source: FileSource) -> FeatureView:
    """(a) CT vertebra features: acquisition (site, scanner, contrast), trabecular HU statistics,
    scalar radiomics and the texture-pool reference (path + SHA-256 + shape) a model loads."""
    return FeatureView(
        name=CT_VIEW, entities=[vertebra], ttl=timedelta(days=spec.ct_ttl_days), source=source, online=True,
        schema=[Field(name="vertebra_id", dtype=String)]
        + [Field(name=n, dtype=FEAST_TYPES[t]) for n, t in spec.ct_fields],
        tags={"ct_schema_sha256": spec.ct_schema_sha256},
        description="One row per CT vertebra; event time = CT date.")


def dxa_label_views(spec: RepoSpec, patient: Entity, spine_level: Entity,
                    source: FileSource, mirror_source: FileSource) -> tuple[FeatureView, FeatureView]:
    """(b) DXA labels per patient + level, event time = DXA exam date, TTL = the pairing window.

    Two views over the same rows: ``dxa_label`` (backward: latest DXA in [t_CT - w, t_CT]) and
    ``dxa_label_mirror`` (offline only; forward: earliest DXA in [t_CT, t_CT + w]).
    """
    schema = [Field(name="patient_id", dtype=String), Field(name="level", dtype=Int64)] + [
        Field(name=n, dtype=FEAST_TYPES[t]) for n, t in DXA_FIELDS]
    ttl = timedelta(days=spec.window_days)
    backward = FeatureView(
        name=DXA_VIEW, entities=[patient, spine_level], ttl=ttl, source=source, schema=schema, online=True,
        tags={"window_days": str(spec.window_days)},
        description="DXA label of a patient's level; Feast returns the latest within the window before the anchor.")
    forward = FeatureView(
        name=DXA_MIRROR_VIEW, entities=[patient, spine_level], ttl=ttl, source=mirror_source,
        schema=list(schema), online=False,  # mirrored times lie in the future: never materialised
        tags={"window_days": str(spec.window_days), "time": "mirrored"},
        description="The same labels on mirrored time: the nearest DXA after the anchor.")
    return backward, forward


# --- Feature services: the input contracts ---------------------------------
def services(spec: RepoSpec, ct: FeatureView, dxa: FeatureView, dxa_mirror: FeatureView
             ) -> tuple[FeatureService, FeatureService]:
    """``osteo_training_v1`` (CT features + both label look-ups) and ``osteo_screening_v1`` (no labels)."""
    tags = {"ct_schema_sha256": spec.ct_schema_sha256, "window_days": str(spec.window_days)}
    training = FeatureService(
        name=TRAINING_SERVICE, features=[ct, dxa, dxa_mirror], tags=tags,
        description="Training input contract: CT vertebra features + the DXA label paired by the "
                    "|t_DXA - t_CT| <= window rule (resolved by features.store.training_set).")
    screening = FeatureService(
        name=SCREENING_SERVICE, features=[ct], tags={"ct_schema_sha256": spec.ct_schema_sha256},
        description="Screening input contract: CT vertebra features only, for online scoring.")
    return training, screening


def build_definitions(spec: RepoSpec) -> list:
    """Every Feast object of the repository, ready for ``FeatureStore.apply``."""
    patient, vertebra, spine_level = entities()
    ct_src, dxa_src, mirror_src = sources()
    ct = ct_vertebra_view(spec, vertebra, ct_src)
    dxa, dxa_mirror = dxa_label_views(spec, patient, spine_level, dxa_src, mirror_src)
    training, screening = services(spec, ct, dxa, dxa_mirror)
    return [patient, vertebra, spine_level, ct_src, dxa_src, mirror_src, ct, dxa, dxa_mirror, training, screening]
