"""The model card: the descriptions a reviewer reads first on the registered model and on each version.

Pure text from what the registry already holds (no MLflow calls here):

* :func:`model_description`: the registered model, what it is for and how versions get promoted;
* :func:`version_description`: one version, its intended use, the data it was trained and
  tested on (DVC data version, split hash), the per-site patient-level headline with 95 % CIs
  and test-patient counts, and what each gate scope decided.

Markdown, since the MLflow UI renders descriptions as Markdown. Aggregates only: no patient
identifiers can reach a description (the inputs are counts, metrics and hashes).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from osteo_config.screen import INTENDED_USE

SITE_KEYS = ("sen", "spe", "f1", "auroc")
_LABELS = {"sen": "SEN %", "spe": "SPE %", "f1": "F1", "auroc": "AUROC"}


def model_description(name: str, approval: str) -> str:
    """Description of the registered model ``name`` (``approval``: ``registry.approval``)."""
    who = ("a named approver moves `champion` (`osteo registry approve`)" if approval == "required"
           else "a candidate passing every gate becomes `champion`")
    return (f"**{name}**: vertebra-level osteoporosis screening and BMD estimation from routine CT "
            "(opportunistic screening), one version per trained candidate.\n\n"
            f"**Intended use.** {INTENDED_USE}\n\n"
            "**Promotion.** Each version is gated per site and on the external site (floors on the lower "
            f"95 % CI bound, minimum evidence, paired drop vs the champion); {who}. Aliases: `champion`, "
            "`challenger`, `previous-champion`; every move is in the keyed audit log (`osteo registry log`).")


def _num(v: Any, pct: bool) -> str:
    if v is None:
        return "n/a"
    return f"{float(v):.1f}" if pct else f"{float(v):.3f}"


def _cell(block: Mapping[str, Any], key: str) -> str:
    pct = key != "auroc"
    v, lo, hi = block.get(key), block.get(f"{key}_lo"), block.get(f"{key}_hi")
    if v is None:
        return "n/a"
    return _num(v, pct) + ("" if lo is None or hi is None else f" [{_num(lo, pct)}, {_num(hi, pct)}]")


def site_rows(metrics: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """``(scope, patient-level block)`` for each site, then external / pooled, as evaluated."""
    sites = [f"site_{s}" for s in metrics.get("sites") or ()] or sorted(k for k in metrics if k.startswith("site_"))
    return [(s, (metrics.get(s) or {}).get("patient") or {}) for s in (*sites, "external", "pooled")
            if isinstance(metrics.get(s), Mapping)]


def version_description(version: str, lineage: Mapping[str, str], metrics: Mapping[str, Any],
                        gate_scopes: Sequence[Mapping[str, Any]] = (), gates_passed: bool | None = None,
                        compared_with: str | None = None) -> str:
    """Markdown model card of one registered version.

    Args:
        version: the registered version.
        lineage: the version's lineage tags (``data_version``, ``split_hash``, ``params_hash``, ``method``, ...).
        metrics: the full evaluation (``evaluate_predictions`` layout) of this version on the test split.
        gate_scopes: :func:`registry.gates.scope_decisions` of its gate report.
        gates_passed: the gate report's verdict (None: not gated).
        compared_with: the champion version the paired comparison was made against.
    """
    lines = [f"**Version {version}** ({lineage.get('method', 'model')}). {INTENDED_USE}", "",
             f"- data version `{lineage.get('data_version', 'n/a')}`, split hash `{lineage.get('split_hash', 'n/a')}`, "
             f"params hash `{lineage.get('params_hash', 'n/a')}`, training run `{lineage.get('training_run_id', 'n/a')}`"]
    if metrics.get("threshold") is not None:
        lines.append(f"- operating threshold {float(metrics['threshold']):.4f} (chosen on the validation split, "
                     "never on test)")
    verdict = {True: "**passed**", False: "**not passed**", None: "not evaluated"}[gates_passed]
    lines.append(f"- gates {verdict}" + (f", paired comparison with champion v{compared_with}" if compared_with
                                          else ", no champion to compare with"))
    rows = site_rows(metrics)
    if rows:
        decided = {r["scope"]: r for r in gate_scopes}
        lines += ["", "Test split, patient level, 95 % patient-bootstrap CI:", "",
                  "| scope | patients (osteoporotic) | " + " | ".join(_LABELS[k] for k in SITE_KEYS) + " | gates |",
                  "|---|---|" + "---|" * len(SITE_KEYS) + "---|"]
        for scope, block in rows:
            d = decided.get(scope, {})
            lines.append(f"| {scope} | {block.get('n_patients', 'n/a')} ({block.get('n_pos', 'n/a')}) | "
                         + " | ".join(_cell(block, k) for k in SITE_KEYS) + f" | {d.get('decision', '-')} |")
    return "\n".join(lines)
