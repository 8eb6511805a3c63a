"""Each loss formula of docs/methods.md against an independent float64 computation."""

import pytest
import torch
import torch.nn.functional as F

from crkd.losses import relation_kd, relation_kd_terms, sinkhorn_knopp, swapped_prediction


def sinkhorn_reference(logits, epsilon, n_iters):
    """The Sinkhorn-Knopp iteration of docs/methods.md literally, in float64 and the exp domain."""
    s = logits.double()
    q = torch.exp(s / epsilon).T
    q = q / q.sum()
    k, b = q.shape
    for _ in range(n_iters):
        q = q / q.sum(1, keepdim=True) / k
        q = q / q.sum(0, keepdim=True) / b
    return (q * b).T


@pytest.mark.parametrize("eps,iters", [(0.05, 3), (0.1, 1), (0.5, 10)])
def test_sinkhorn_matches_reference(eps, iters):
    g = torch.Generator().manual_seed(0)
    logits = torch.rand(64, 7, generator=g) * 2 - 1
    got = sinkhorn_knopp(logits, eps, iters)
    assert torch.allclose(got.double(), sinkhorn_reference(logits, eps, iters), atol=1e-5)


def test_sinkhorn_marginals():
    logits = torch.rand(96, 6, generator=torch.Generator().manual_seed(1)) * 2 - 1
    q = sinkhorn_knopp(logits, 0.05, 50).double()
    assert torch.allclose(q.sum(1), torch.ones(96, dtype=torch.float64), atol=1e-5)
    # after enough iterations every class gets the same mass B / K
    assert torch.allclose(q.sum(0), torch.full((6,), 96 / 6, dtype=torch.float64), atol=0.02)


def test_sinkhorn_small_epsilon_is_finite_and_agrees():
    logits = torch.rand(128, 10, generator=torch.Generator().manual_seed(2)) * 2 - 1
    q = sinkhorn_knopp(logits, 0.01, 3)
    assert torch.isfinite(q).all()
    assert torch.allclose(q.sum(1), torch.ones(128), atol=1e-5)
    assert torch.allclose(q.double(), sinkhorn_reference(logits, 0.01, 3), atol=1e-4)
    assert torch.isfinite(sinkhorn_knopp(logits, 0.001, 3)).all()


def test_sinkhorn_batched_leading_dims():
    logits = torch.rand(2, 3, 32, 5, generator=torch.Generator().manual_seed(3)) * 2 - 1
    got = sinkhorn_knopp(logits, 0.05, 3)
    for i in range(2):
        for j in range(3):
            assert torch.allclose(got[i, j], sinkhorn_knopp(logits[i, j], 0.05, 3))


def rkd_reference(zt, zs, t, tau, eta_at="tau", form="kl"):
    """Cr-KD's L_rKD (docs/methods.md, crkd) written out per sample in float64."""
    zt, zs = zt.double(), zs.double()
    n, c_l = zt.shape
    etas, terms = [], []
    for i in range(n):
        pt = torch.softmax(zt[i] / (tau * t), 0)
        ps = torch.softmax(zs[i, :c_l] / (tau * t), 0)
        kl = (pt * (pt.log() - ps.log())).sum() if form == "kl" else -(pt * ps.log()).sum()
        temp = tau if eta_at == "tau" else tau * t
        etas.append(torch.softmax(zs[i] / temp, 0)[:c_l].sum())
        terms.append(kl)
    eta = torch.stack(etas)
    g = n * eta / eta.sum()
    return (g * torch.stack(terms)).mean() * t * t


@pytest.mark.parametrize("eta_at,form", [("tau", "kl"), ("tau_t", "ce"), ("tau_t", "kl"), ("tau", "ce")])
def test_relation_kd_matches_reference(eta_at, form):
    g = torch.Generator().manual_seed(4)
    zt = torch.rand(16, 5, generator=g) * 2 - 1
    zs = torch.rand(16, 8, generator=g) * 2 - 1
    got = relation_kd(zt, zs, t=4.0, tau=0.1, eta_at=eta_at, form=form)
    assert got.item() == pytest.approx(rkd_reference(zt, zs, 4.0, 0.1, eta_at, form).item(), rel=1e-5)
    got2 = relation_kd(zt, zs, t=2.0, tau=0.3, eta_at=eta_at, form=form)
    assert got2.item() == pytest.approx(rkd_reference(zt, zs, 2.0, 0.3, eta_at, form).item(), rel=1e-5)


def test_relation_kd_zero_when_student_matches_teacher():
    g = torch.Generator().manual_seed(5)
    zt = torch.rand(10, 4, generator=g) * 2 - 1
    zs = torch.cat([zt, torch.rand(10, 3, generator=g)], 1)
    assert relation_kd(zt, zs).abs().item() < 1e-6


def test_relation_kd_weight_mean_one_and_gradient_through_weight():
    g = torch.Generator().manual_seed(6)
    zt = torch.rand(12, 5, generator=g) * 2 - 1
    zs = (torch.rand(12, 8, generator=g) * 2 - 1).requires_grad_()
    loss, w = relation_kd_terms(zt, zs)
    assert w.mean().item() == pytest.approx(1.0, abs=1e-6)
    loss.backward()
    # novel logits enter only through eta: a non-zero gradient there proves g is not detached
    assert zs.grad[:, 5:].abs().sum() > 0
    zs.grad = None
    relation_kd(zt, zs, detach_weight=True).backward()
    assert zs.grad[:, 5:].abs().sum() == 0


def test_relation_kd_leading_dims_average_independent_batches():
    g = torch.Generator().manual_seed(7)
    zt = torch.rand(2, 3, 10, 4, generator=g)
    zs = torch.rand(2, 3, 10, 6, generator=g)
    expect = sum(relation_kd(zt[i, j], zs[i, j]) for i in range(2) for j in range(3)) / 6
    assert relation_kd(zt, zs).item() == pytest.approx(expect.item(), rel=1e-5)


def test_swapped_prediction_matches_loop():
    g = torch.Generator().manual_seed(8)
    v, l, h, b, c = 4, 2, 3, 6, 7
    logits = torch.randn(v, h, b, c, generator=g)
    targets = torch.softmax(torch.randn(l, h, b, c, generator=g), -1)
    got = swapped_prediction(logits, targets, tau=0.1)
    expect = torch.zeros(h, b, dtype=torch.float64)
    pairs = 0
    for i in range(l):
        for j in range(v):
            if i == j:
                continue
            logp = F.log_softmax(logits[j].double() / 0.1, -1)
            expect += -(targets[i].double() * logp).sum(-1)
            pairs += 1
    assert pairs == l * (v - 1)
    assert torch.allclose(got.double(), expect / pairs, atol=1e-5)


def test_sinkhorn_mask_equals_subset():
    g = torch.Generator().manual_seed(9)
    logits = torch.rand(2, 40, 6, generator=g) * 2 - 1
    mask = torch.rand(40, generator=g) < 0.5
    got = sinkhorn_knopp(logits, 0.05, 3, mask=mask)
    assert torch.allclose(got[:, mask], sinkhorn_knopp(logits[:, mask], 0.05, 3), atol=1e-5)
    assert (got[:, ~mask] == 0).all()
    assert (sinkhorn_knopp(logits, 0.05, 3, mask=torch.zeros(40, dtype=torch.bool)) == 0).all()


def test_relation_kd_mask_equals_subset():
    g = torch.Generator().manual_seed(10)
    zt, zs = torch.rand(3, 20, 4, generator=g), torch.rand(3, 20, 7, generator=g)
    mask = torch.rand(20, generator=g) < 0.6
    loss, w = relation_kd_terms(zt, zs, mask=mask)
    ref, wref = relation_kd_terms(zt[:, mask], zs[:, mask])
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(w[:, mask], wref, atol=1e-5) and (w[:, ~mask] == 0).all()
