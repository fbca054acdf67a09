"""Prefect flows: compose the library entry points, never re-implement them."""
