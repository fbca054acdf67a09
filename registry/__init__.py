"""Evaluation gates and MLflow model-registry promotion (issue: evaluation and registry)."""
