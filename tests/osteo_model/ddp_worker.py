"""Worker for test_ddp.py: one rank of a 2-process CPU/gloo run (launched as a script)."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import SyntheticPools  # noqa: E402

from osteo_model.backbones import build_backbone  # noqa: E402
from osteo_model.config import BackboneConfig, MoEConfig, TrainConfig  # noqa: E402
from osteo_model.moe import MultiTaskModel, MultiTaskObjective  # noqa: E402
from osteo_model.sinkhorn import sinkhorn  # noqa: E402
from osteo_model.train import fit  # noqa: E402

BACKBONE = BackboneConfig(name="compact", widths=(8, 16), stem_width=8, embed_dim=16)
MOE = MoEConfig(expert_hidden=8)


def train(out: Path, batch_size: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = MultiTaskModel(build_backbone(BACKBONE), MOE)
    cfg = TrainConfig(epochs=1, batch_size=batch_size, lr=1e-3, seed=3, device="cpu", ckpt_every_steps=100)
    result = fit(model, MultiTaskObjective(MOE), SyntheticPools(n=16), cfg, out, params_digest="ddp")
    return {k: v.detach().clone() for k, v in result.model.state_dict().items()}


def main(rank: int, world: int, port: int, out: Path) -> None:
    if world == 1:
        torch.save({"weights": train(out / "single", 4)}, out / "single.pt")
        return
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    scores = torch.randn(8, 5, generator=torch.Generator().manual_seed(11))
    q_local = sinkhorn(scores[rank * 4:(rank + 1) * 4], 50, 0.05)        # each rank holds half the batch
    weights = train(out / "ddp", 2)                                       # 2 per rank = 4 per step globally
    torch.save({"weights": weights, "q": q_local}, out / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
