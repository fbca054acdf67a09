"""Readers for the raw export: CT volumes (NIfTI, DICOM), vertebra masks, CSV tables."""
