"""Screening new studies with the champion model: the library pieces of ``osteo screen``.

One concept per module, each a pure core with typed inputs (configs from ``osteo_config.screen``):

- ``quality``: per-vertebra quality flags (label order, suspected fracture, metal, partial coverage);
- ``tscore``: T-score, WHO class and standardised BMD per DXA vendor reference;
- ``conformal``: split-conformal BMD intervals and their coverage;
- ``drift``: PSI / two-sample KS of a batch vs the model's stored training distribution;
- ``sr``: DICOM SR (TID 1500) per study, referencing the source CT series;
- ``pdf``: one-page PDF per patient;
- ``pacs``: QIDO-RS / WADO-RS / STOW-RS client for a DICOMweb PACS (Orthanc).

Nothing is imported at package import (no side effects; highdicom/reportlab load only where used).
"""
