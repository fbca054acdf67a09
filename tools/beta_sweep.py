"""Choose ``model.moe.beta`` (Eq. 4's L_BMD weight) on the VALIDATION split: fine-tune tp_swav from the
current pretrained encoder at each beta and print validation BMD r and vertebra AUROC (never the test split).

    .venv/bin/python tools/beta_sweep.py 1 10 30        # ~1-2 min per value on the demo, 2 CPU cores
"""
from __future__ import annotations

import json
import sys

from valid_sweep import sweep

if __name__ == "__main__":
    for value in sys.argv[1:] or ["1", "10", "30"]:
        print(json.dumps(sweep({"model": {"moe": {"beta": float(value)}}})), flush=True)
