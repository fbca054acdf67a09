"""MoE multi-task head: gate properties, Eq. 3 mixture, every loss term by hand, ablations."""
from __future__ import annotations

import math

import numpy as np

import torch
import torch.nn.functional as F

from osteo_model.backbones import build_backbone
from osteo_model.config import MoEConfig
import pytest

from osteo_config.model import UnknownVendorError, device_index
from osteo_model.moe import (LossWeights, MoEHead, MultiTaskModel, MultiTaskObjective, decode_outputs, mix_experts,
                             unified_loss)


def test_gate_weights_sum_to_one_and_depend_on_device(moe_cfg):
    torch.manual_seed(0)
    head = MoEHead(16, moe_cfg)
    p = torch.randn(1, 16).expand(4, 16)                         # same image, four devices
    out = head(p, torch.arange(4))
    gate = out["gate"]                                           # (4, 3)
    assert gate.shape == (4, 3) and (gate > 0).all()
    torch.testing.assert_close(gate.sum(dim=1), torch.ones(4))
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.allclose(gate[i], gate[j])          # the device changes the mixture
    # ... and therefore the prediction for the same image ("what would this vendor say").
    assert not torch.allclose(out["bmd_z"][0], out["bmd_z"][1])


def test_output_is_the_gate_weighted_sum_of_experts(moe_cfg):
    torch.manual_seed(1)
    head = MoEHead(16, moe_cfg)
    p, dev = torch.randn(5, 16), torch.tensor([0, 1, 2, 3, 0])
    out = head(p, dev)                                           # contrast None = the "unknown" row
    h = p + head.contrast_embed(torch.full((5,), 2))             # C_I added to P_I before experts and gate
    e = torch.stack([ex(h) for ex in head.experts], dim=1)      # (5, 3, 8)
    manual = sum(out["gate"][:, i:i + 1] * e[:, i] for i in range(3))
    torch.testing.assert_close(mix_experts(e, out["gate"]), manual)
    torch.testing.assert_close(out["bmd_z"], head.bmd_head(manual).squeeze(-1))


def test_no_moe_ablation_ignores_the_device():
    head = MoEHead(16, MoEConfig(use_moe=False, expert_hidden=8))
    p = torch.randn(3, 16)
    a, b = head(p, torch.tensor([0, 1, 2])), head(p, torch.tensor([3, 3, 3]))
    assert len(head.experts) == 1 and not hasattr(head, "f_g")
    torch.testing.assert_close(a["class_logits"], b["class_logits"])


def _outputs():
    return {"class_logits": torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]),
            "bmd_z": torch.tensor([0.0, 1.0, -1.0]),
            "level_logits": torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]]))}


def test_each_loss_term_matches_manual_computation():
    who = torch.tensor([0, 2, -1])                                # third vertebra: no DXA class
    bmd = torch.tensor([0.9, 1.2, float("nan")])
    level = torch.tensor([1, 2, 3])
    total, parts = unified_loss(_outputs(), who, bmd, level, LossWeights(1.0, 1.0, 0.5), 0.9, 0.15)
    # L_class: CE of targets [0, 1] (osteoporosis = who 2) on the first two rows.
    l_class = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(math.e / (1 + math.e))) / 2
    # L_BMD: MSE in g/cm2 (the paper's beta): targets [0.9, 1.2] vs predictions 0.9 + 0.15 z = [0.9, 1.05].
    l_bmd = (0.0 + 0.15 ** 2) / 2
    # L_position: -log p(level) per row: 0.5, 0.8, 1/3.
    l_pos = -(math.log(0.5) + math.log(0.8) + math.log(1 / 3)) / 3
    assert abs(parts["class"].item() - l_class) < 1e-5
    assert abs(parts["bmd"].item() - l_bmd) < 1e-5
    assert abs(parts["position"].item() - l_pos) < 1e-5
    assert abs(total.item() - (l_class + l_bmd + 0.5 * l_pos)) < 1e-5


def test_class_only_ablation_and_missing_labels_give_zero_terms():
    w = LossWeights.from_config(MoEConfig(class_only=True))
    assert (w.alpha, w.beta, w.gamma) == (1.0, 0.0, 0.0)
    out = {k: v.clone().requires_grad_(True) for k, v in _outputs().items()}
    total, parts = unified_loss(out, torch.full((3,), -1), torch.full((3,), float("nan")),
                                torch.tensor([1, 2, 3]), LossWeights(), 0.9, 0.15)
    assert parts["class"].item() == 0.0 and parts["bmd"].item() == 0.0
    total.backward()                                               # still differentiable
    assert out["class_logits"].grad.abs().sum() == 0 and out["level_logits"].grad.abs().sum() > 0


def test_full_model_shapes_and_decoding(backbone_cfg, moe_cfg, dataset):
    model = MultiTaskModel(build_backbone(backbone_cfg), moe_cfg)
    out = model(dataset.pool[:4], dataset.device[:4])
    assert out["class_logits"].shape == (4, 2) and out["level_logits"].shape == (4, 18)
    dec = decode_outputs(out, moe_cfg)
    assert ((dec["score"] >= 0) & (dec["score"] <= 1)).all()
    torch.testing.assert_close(dec["score"], F.softmax(out["class_logits"], -1)[:, 1])
    torch.testing.assert_close(dec["bmd_g_cm2"], out["bmd_z"] * 0.15 + 0.9)
    assert dec["level"].min() >= 1 and dec["level"].max() <= 18


def test_bmd_term_is_in_g_cm2_whatever_the_standardisation():
    # beta keeps the paper's meaning: the same predicted g/cm2 gives the same L_BMD for any (center, scale).
    bmd = torch.tensor([0.7, 1.1, 0.95])
    pred_g = torch.tensor([0.8, 1.0, 0.95])
    expected = ((pred_g - bmd) ** 2).mean()
    for center, scale in ((0.9, 0.15), (1.0, 0.05), (0.0, 1.0)):
        out = {**_outputs(), "bmd_z": (pred_g - center) / scale}
        _, parts = unified_loss(out, torch.tensor([0, 1, 2]), bmd, torch.tensor([1, 2, 3]), LossWeights(), center, scale)
        torch.testing.assert_close(parts["bmd"], expected)


def test_unknown_vendor_is_a_typed_error_naming_the_known_vendors():
    vendors = ("Hologic", "GE Lunar", "MEDIX")
    with pytest.raises(UnknownVendorError) as err:
        device_index(vendors, "GE")                                # a misspelling of "GE Lunar"
    assert all(v in str(err.value) for v in vendors) and "'unknown'" in str(err.value)
    assert device_index(vendors, "GE Lunar") == 1
    assert device_index(vendors, "unknown") == device_index(vendors, None) == device_index(vendors, float("nan")) == 3
    assert MoEConfig().device_index("MEDIX") == 2
    with pytest.raises(UnknownVendorError):
        MoEConfig().device_index("Lunar")


def test_vendor_dropout_trains_the_unknown_device_embedding(backbone_cfg, dataset):
    cfg = MoEConfig(n_experts=3, expert_hidden=8, vendor_dropout=0.5, contrast_dropout=0.5)
    batch = {"pool": dataset.pool[:8], "device": torch.zeros(8, dtype=torch.long),   # all Hologic
             "contrast": torch.zeros(8, dtype=torch.long), "who_class": dataset.who[:8], "bmd": dataset.bmd[:8],
             "level": dataset.level[:8], "index": torch.arange(8)}
    objective = MultiTaskObjective(cfg, seed=3)
    device, contrast = objective.inputs(batch, step=0)
    assert (device == 3).any() and (device == 0).any()           # some replaced by "unknown", some kept
    assert (contrast == 2).any() and (contrast == 0).any()
    # The draw is a function of (seed, step, dataset index): same on every rank and after a resume.
    again, _ = MultiTaskObjective(cfg, seed=3).inputs(dict(batch), step=0)
    assert torch.equal(device, again)
    assert not torch.equal(device, objective.inputs(batch, step=1)[0])
    torch.manual_seed(0)
    model = MultiTaskModel(build_backbone(backbone_cfg), cfg)
    loss, _ = objective(model, batch, step=0)
    loss.backward()
    grad = model.head.device_embed.weight.grad                   # (4, E)
    assert grad[3].abs().sum() > 0 and grad[1:3].abs().sum() == 0   # the unknown row learns; unseen vendors do not
    without = MultiTaskObjective(MoEConfig(n_experts=3, expert_hidden=8, vendor_dropout=0.0), seed=3)
    assert (without.inputs(batch, step=0)[0] == 0).all()


def test_contrast_flag_changes_the_prediction_and_is_ignored_when_disabled(backbone_cfg, dataset):
    torch.manual_seed(0)
    pool, dev = dataset.pool[:3], torch.zeros(3, dtype=torch.long)
    model = MultiTaskModel(build_backbone(backbone_cfg), MoEConfig(expert_hidden=8)).eval()
    a = model(pool, dev, contrast=torch.zeros(3, dtype=torch.long))["bmd_z"]
    b = model(pool, dev, contrast=torch.ones(3, dtype=torch.long))["bmd_z"]
    assert not torch.allclose(a, b)
    off = MultiTaskModel(build_backbone(backbone_cfg), MoEConfig(expert_hidden=8, use_contrast=False)).eval()
    torch.testing.assert_close(off(pool, dev, contrast=torch.zeros(3, dtype=torch.long))["bmd_z"],
                               off(pool, dev, contrast=torch.ones(3, dtype=torch.long))["bmd_z"])


def test_descriptors_enter_the_prediction_standardised_and_are_required(backbone_cfg, dataset):
    # purpose: a model with descriptors reads them (size/projection change the BMD), standardises them with the
    # stored training stats (shifting raw values and the mean together changes nothing), refuses to run without
    from osteo_model.errors import DescriptorInputError
    torch.manual_seed(0)
    pool, dev = dataset.pool[:3], torch.zeros(3, dtype=torch.long)
    cfg = MoEConfig(expert_hidden=8, descriptors=("proj_hu_mm", "body_width_mm"))
    model = MultiTaskModel(build_backbone(backbone_cfg), cfg).eval()
    model.head.set_descriptor_stats([1000.0, 40.0], [300.0, 5.0])
    d = torch.tensor([[900.0, 38.0], [1500.0, 45.0], [700.0, 35.0]])
    a = model(pool, dev, descriptors=d)["bmd_z"]
    assert not torch.allclose(a, model(pool, dev, descriptors=d * 1.5)["bmd_z"])
    state = model.state_dict()
    assert torch.equal(state["head.desc_mean"], torch.tensor([1000.0, 40.0]))      # travels with the weights
    model.head.set_descriptor_stats([1100.0, 40.0], [300.0, 5.0])
    torch.testing.assert_close(model(pool, dev, descriptors=d + torch.tensor([100.0, 0.0]))["bmd_z"], a)
    with pytest.raises(DescriptorInputError, match="proj_hu_mm"):
        model(pool, dev)
    with pytest.raises(DescriptorInputError):
        model(pool, dev, descriptors=d[:, :1])


def test_wide_path_is_fitted_in_closed_form_and_adds_to_bmd_and_logit():
    # purpose: the wide path (model.moe.wide) reproduces a linear relation of descriptors, vendor and contrast
    # to BMD from its closed-form fit alone (deep part silent), moves only the osteoporosis logit, trains, and
    # a wide head without descriptors is a config error
    from osteo_config.model import ModelConfigError
    rng = np.random.default_rng(0)
    n = 300
    d = rng.normal([1000.0, 40.0], [300.0, 5.0], size=(n, 2))
    dev, con = rng.integers(0, 3, n), rng.integers(0, 2, n)
    bmd = 0.5 + 0.0004 * d[:, 0] + 0.004 * d[:, 1] + 0.06 * (dev == 1) - 0.03 * con
    cls = (bmd < np.quantile(bmd, 0.3)).astype(int)
    cls[:20] = -1                                                           # unknown class rows are left out
    bmd[20:40] = np.nan                                                     # unknown BMD rows too
    head = MoEHead(8, MoEConfig(expert_hidden=8, descriptors=("proj_hu_mm", "body_width_mm"), wide=True))
    for p in [*head.experts.parameters(), *head.bmd_head.parameters(), *head.class_head.parameters()]:
        torch.nn.init.zeros_(p)                                             # the deep part says nothing
    head.set_descriptor_stats(d.mean(axis=0), d.std(axis=0))
    before = head(torch.zeros(n, 8), torch.as_tensor(dev), torch.as_tensor(con), torch.as_tensor(d, dtype=torch.float32))
    assert torch.count_nonzero(before["bmd_z"]) == 0                        # zero until fitted
    fit = head.init_wide(d, dev, con, bmd, cls)
    assert fit["bmd_rows"] == n - 20 and fit["class_rows"] == n - 20 and fit["bmd_r"] > 0.999
    out = head(torch.zeros(n, 8), torch.as_tensor(dev), torch.as_tensor(con), torch.as_tensor(d, dtype=torch.float32))
    pred = out["bmd_z"].detach().numpy() * head.cfg.bmd_scale + head.cfg.bmd_center
    ok = np.isfinite(bmd)
    np.testing.assert_allclose(pred[ok], bmd[ok], atol=5e-3)
    assert torch.count_nonzero(out["class_logits"][:, 0]) == 0              # only the osteoporosis logit moves
    score = F.softmax(out["class_logits"], dim=-1)[:, 1].detach().numpy()
    known = cls >= 0
    assert score[known][cls[known] == 1].mean() > score[known][cls[known] == 0].mean() + 0.3
    out["bmd_z"].sum().backward()
    assert head.wide.weight.grad is not None and head.wide.weight.grad.abs().sum() > 0
    with pytest.raises(ModelConfigError, match="wide needs"):
        MoEConfig(wide=True)


def test_wide_path_takes_no_device_in_the_no_moe_ablation():
    # purpose: "no MoE" means no device input: the wide path must not bring the vendor back
    cfg = MoEConfig(expert_hidden=8, descriptors=("proj_hu_mm",), wide=True, use_moe=False)
    head = MoEHead(8, cfg)
    head.set_descriptor_stats(np.zeros(1), np.ones(1))
    torch.nn.init.normal_(head.wide.weight)
    d, con = torch.ones(2, 1), torch.zeros(2, dtype=torch.long)
    a = head(torch.zeros(2, 8), torch.tensor([0, 0]), con, d)
    b = head(torch.zeros(2, 8), torch.tensor([1, 2]), con, d)
    torch.testing.assert_close(a["bmd_z"], b["bmd_z"])
    torch.testing.assert_close(a["class_logits"], b["class_logits"])
