"""features: ingestion (CT + vertebra masks + DXA -> pseudonymised ROIs) and texture maps.

Sub-modules are imported explicitly (``features.ingest``, ``features.roi``, ...);
importing the package has no side effects.
"""
