"""Synthetic multi-site CT + DXA cohort simulator (hospital-shaped raw export + separate truth).

Entry points: :func:`cohort.simulate.run_cohort` and :func:`cohort.report.write_report`.
"""
