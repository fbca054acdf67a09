"""Sinkhorn-Knopp codes: SwAV marginals, invariances and validation."""
from __future__ import annotations

import pytest
import torch

from osteo_model.sinkhorn import sinkhorn


@pytest.mark.parametrize("B,K", [(8, 4), (6, 10), (32, 32)])
def test_rows_are_distributions_and_prototypes_equally_used(B, K):
    scores = torch.nn.functional.normalize(torch.randn(B, K, generator=torch.Generator().manual_seed(B * K)), dim=1)
    q = sinkhorn(scores, n_iters=500, epsilon=0.05)
    assert q.shape == (B, K) and (q >= 0).all()
    # Last step normalises rows: each sample's code sums to 1 (mass 1/B, rescaled by B).
    torch.testing.assert_close(q.sum(dim=1), torch.ones(B), atol=1e-6, rtol=0)
    # Equipartition: each prototype receives B/K of the batch (columns sum to 1/K before rescaling).
    torch.testing.assert_close(q.sum(dim=0), torch.full((K,), B / K), atol=1e-4, rtol=0)


def test_codes_follow_scores_and_ignore_a_global_shift():
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.1, 0.95]])
    q = sinkhorn(scores, n_iters=3, epsilon=0.05)
    assert q.argmax(dim=1).tolist() == [0, 1, 0, 1]
    torch.testing.assert_close(sinkhorn(scores + 3.0, 3, 0.05), q)


def test_equipartition_overrides_a_collapsed_batch():
    # All samples prefer prototype 0; the transport constraint still spreads them.
    scores = torch.tensor([[1.0, 0.0]] * 4) + 0.01 * torch.arange(4.0)[:, None] * torch.tensor([[0.0, 1.0]])
    q = sinkhorn(scores, n_iters=200, epsilon=0.05)
    torch.testing.assert_close(q.sum(dim=0), torch.tensor([2.0, 2.0]), atol=1e-3, rtol=0)


def test_no_gradient_and_input_validation():
    s = torch.randn(4, 3, requires_grad=True)
    assert not sinkhorn(s, 3, 0.05).requires_grad
    with pytest.raises(ValueError, match="B, K"):
        sinkhorn(torch.randn(4), 3, 0.05)
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn(torch.randn(4, 3), 3, 0.0)
