"""CRCD (relation `crcd`): the Gram-form scores and losses against naive float64 relation
vectors, the positive at identity, a memory bound at batch 512, the memory banks, the gradient
element, options, resume and an end-to-end run on digits."""
from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from crkd import Discover, Pretrain, apply_overrides, preset
from crkd.errors import ConfigError
from crkd.losses.crcd import (ce_feature_grad, contrast_scores, infonce, momentum_update, nce, nce_log_z,
                              paired_relation_scores, relation_scores, top1)
from crkd.relations import RELATIONS, Dims, StepContext
from crkd.relations.crcd import CrcdOptions
from tiny import cli_run, fast, resumed_after, untimed

FAST = fast(4)


def unit(*shape, dtype=torch.float64):
    return F.normalize(torch.randn(*shape, dtype=dtype), dim=-1)


def naive_relation(v, a):
    diff = [float(x) for x in (v - a)]
    norm = math.sqrt(sum(x * x for x in diff))
    return [x / norm for x in diff]


def dot(x, y):
    return sum(p * q for p, q in zip(x, y))


# --- scores and losses ---------------------------------------------------------------------

def test_gram_scores_equal_materialised_relations():
    torch.manual_seed(0)
    m, na, k, d = 5, 3, 4, 6
    v, a, w, wp = unit(m, d), unit(na, d), unit(k, d), unit(m, d)
    got = relation_scores(v, a, w, scale=2.0)
    got_pos = paired_relation_scores(v, a, wp)
    for i in range(m):
        for j in range(na):
            r_v = naive_relation(v[i], a[j])
            assert math.isclose(got_pos[i, j].item(), dot(naive_relation(wp[i], a[j]), r_v), abs_tol=2e-6)
            for c in range(k):
                assert math.isclose(got[i, j, c].item(), 2.0 * dot(naive_relation(w[c], a[j]), r_v), abs_tol=4e-6)
    # non-unit vectors too: the identity holds for any w, v, a
    v2, a2, w2 = (torch.randn(n, d, dtype=torch.float64) * 3 for n in (m, na, k))
    assert math.isclose(relation_scores(v2, a2, w2)[1, 2, 3].item(),
                        dot(naive_relation(w2[3], a2[2]), naive_relation(v2[1], a2[2])), abs_tol=4e-6)


def test_infonce_and_nce_equal_naive_formulas():
    torch.manual_seed(0)
    pos, neg, n_data, tau = torch.rand(3, 2) * 2 - 1, torch.rand(3, 2, 7) * 2 - 1, 50, 0.5
    got = infonce(pos / tau, neg / tau)
    log_z = nce_log_z(pos / tau, neg / tau, n_data)
    got_nce = nce(pos / tau, neg / tau, log_z, n_data)
    scores = [float(x) for x in pos.flatten()] + [float(x) for x in neg.flatten()]
    z = sum(math.exp(s / tau) for s in scores) / len(scores) * n_data     # CRD: mean(out) * N
    assert math.isclose(log_z.item(), math.log(z), rel_tol=1e-5)
    for i in range(3):
        for j in range(2):
            e_pos = math.exp(pos[i, j].item() / tau)
            e_neg = [math.exp(x / tau) for x in neg[i, j].tolist()]
            assert math.isclose(got[i, j].item(), -math.log(e_pos / (e_pos + sum(e_neg))), rel_tol=1e-5)
            kn = 7 / n_data
            want = -(math.log((e_pos / z) / (e_pos / z + kn)) + sum(math.log(kn / (x / z + kn)) for x in e_neg))
            assert math.isclose(got_nce[i, j].item(), want, rel_tol=1e-5)


def test_positive_scores_highest_when_student_equals_teacher():
    torch.manual_seed(0)
    memory = unit(40, 8, dtype=torch.float32)
    idx = torch.arange(6)
    pos, neg = contrast_scores(memory[idx], memory[idx], memory[10:30], memory[30:35])
    assert torch.allclose(pos, torch.ones_like(pos), atol=1e-5)
    assert (pos.unsqueeze(-1) > neg).all() and top1(pos, neg).mean() == 1
    # the same through the term: identity projection, student == teacher == memory
    term = make_term(CrcdOptions(proj_dim=0, samples="all"), n=40, d=8)
    term.feat.mem_s.copy_(memory)
    term.feat.mem_t.copy_(memory)
    feats = (memory[idx] * 3).unsqueeze(0).repeat(2, 1, 1)
    _, logs = term(ctx_for(feats, feats, idx))
    assert logs["rel/crcd/acc"].item() == 1.0


# --- memory ----------------------------------------------------------------------------------

class Allocations(TorchDispatchMode):
    """Every tensor an op allocates (views excluded), forward and backward."""

    def __init__(self):
        super().__init__()
        self.numels: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    self.numels.append(t.numel())
        return out


def test_memory_bound_at_batch_512():
    """B = 512, L = 2 (M = 1024 queries), 32 anchors, K = 500, d = 128, 512-d features, N = 50000,
    run on the meta device (shapes only). Bound: no tensor larger than the score tensor
    M * A * K = 16.4 M floats (66 MB), and at most 30 score-tensor equivalents allocated in one
    forward + backward of the whole term, both sides (2.0 GB, an upper bound of the peak; 27.9
    measured).
    The literal form would build one (M * A, K + 1, d) tensor per side: 2.1 G floats, 8.4 GB."""
    m, anchors, k, d = 1024, 32, 500, 128
    term = make_term(CrcdOptions(), n=50000, d=512, known=80).to("meta")
    feats = torch.empty(2, 512, 512, device="meta", requires_grad=True)
    ctx = StepContext({"feats": feats}, {"feats": torch.empty(2, 512, 512, device="meta"),
                                         "lab": torch.empty(2, 512, 80, device="meta")},
                      torch.zeros(512, dtype=torch.bool, device="meta"),
                      torch.empty(512, dtype=torch.long, device="meta"),
                      torch.empty(512, dtype=torch.long, device="meta"), None, 0)
    with Allocations() as seen:
        loss, _ = term(ctx)
        loss.backward()
    score = m * anchors * k
    assert max(seen.numels) == score
    assert sum(seen.numels) <= 30 * score
    assert sum(seen.numels) < m * anchors * (k + 1) * d / 4


def test_memory_banks_update_after_the_loss():
    torch.manual_seed(0)
    n, d, b = 30, 6, 5
    term = make_term(CrcdOptions(proj_dim=4, negatives=7, anchors=3), n=n, d=d)
    term.feat.mem_s.copy_(unit(n, 4, dtype=torch.float32))
    term.feat.mem_t.copy_(unit(n, 4, dtype=torch.float32))
    old_s, old_t = term.feat.mem_s.clone(), term.feat.mem_t.clone()
    idx = torch.tensor([3, 7, 11, 20, 29])
    fs, ft = torch.randn(2, b, d), torch.randn(2, b, d)
    ctx = ctx_for(fs, ft, idx)
    torch.manual_seed(5)
    loss, logs = term(ctx)
    with torch.no_grad():
        z_s = F.normalize(term.feat.proj_s(fs), dim=-1)
        z_t = F.normalize(term.feat.proj_t(ft), dim=-1)
    want_s = F.normalize(0.5 * old_s[idx] + 0.5 * z_s.mean(0), dim=-1)
    want_t = F.normalize(0.5 * old_t[idx] + 0.5 * z_t.mean(0), dim=-1)
    assert torch.allclose(term.feat.mem_s[idx], want_s, atol=1e-6)
    assert torch.allclose(term.feat.mem_t[idx], want_t, atol=1e-6)
    rest = torch.ones(n, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(term.feat.mem_s[rest], old_s[rest]) and torch.equal(term.feat.mem_t[rest], old_t[rest])
    # The loss read the banks as they were before the update (same draws: same seed).
    torch.manual_seed(5)
    a_idx, k_idx = torch.randint(n, (3,)), torch.randint(n, (7,))
    q = idx.repeat(2)
    pos, neg = contrast_scores(z_s.flatten(0, 1), old_t[q], old_t[k_idx], old_t[a_idx], 1 / 0.05)
    unl = torch.tensor([False, True, True, False, True]).repeat(2).float()
    keep = (q.unsqueeze(1) != a_idx.unsqueeze(0)).float()
    neg = neg.masked_fill((q.unsqueeze(1) == k_idx.unsqueeze(0)).unsqueeze(1), float("-inf"))
    want = ((infonce(pos, neg) * keep).sum(-1) / keep.sum(-1) * unl).sum() / unl.sum()
    assert math.isclose(logs["rel/crcd/student"].item(), want.item(), rel_tol=1e-5)
    momentum_update(old_s, idx, z_s.mean(0), 0.5)
    assert torch.allclose(old_s, term.feat.mem_s, atol=1e-6)


# --- gradient element, options ----------------------------------------------------------

def test_feature_gradient_equals_closed_form():
    torch.manual_seed(0)
    f = torch.randn(4, 6, dtype=torch.float64)
    w = unit(3, 6)
    y = torch.tensor([0, 2, 1, 1])
    got = ce_feature_grad(f, w, y, 0.1)
    for i in range(4):
        n = f[i] / f[i].norm()
        p = torch.softmax(w @ n / 0.1, 0)
        p[y[i]] -= 1
        want = (torch.eye(6, dtype=torch.float64) - torch.outer(n, n)) @ (w.t() @ p) / (0.1 * f[i].norm())
        assert torch.allclose(got[i], want, atol=1e-10)
    # create_graph keeps it differentiable: the student's double backprop
    fs = f.clone().requires_grad_()
    ce_feature_grad(fs, w, y, 0.1, create_graph=True).pow(2).sum().backward()
    assert fs.grad is not None and fs.grad.abs().sum() > 0


def test_scale_off_tail_and_options():
    term = make_term(CrcdOptions(), epochs=250)
    assert term.scale(239) == 1.0 and term.scale(240) == 0.0
    assert make_term(CrcdOptions(off_tail=0.0), epochs=250).scale(249) == 1.0
    cfg = apply_overrides(preset("digits"), ["discover.relation=crcd", "relation.grad=true", "relation.form=nce"])
    assert cfg.relation.grad is True and cfg.relation.form == "nce"
    for key, value, words in [("tau", 0.0, "relation.tau must be > 0"),
                              ("anchors", 0, "relation.anchors must be >= 1"),
                              ("momentum", 1.5, "relation.momentum must be in [0, 1]"),
                              ("proj_dim", -1, "relation.proj_dim must be >= 0"),
                              ("form", "crd", "relation.form must be one of infonce, nce")]:
        with pytest.raises(ConfigError, match=re.escape(words)) as e:
            CrcdOptions(**{key: value}).validate()
        assert "\n" not in str(e.value)


def make_term(opts, n=30, d=6, known=3, epochs=10):
    return RELATIONS["crcd"](opts, Dims(known, 3, d, num_train=n, tau=0.1, epochs=epochs))


def ctx_for(feats_s, feats_t, idx, known=3):
    b = idx.shape[0]
    lab = torch.zeros(b, dtype=torch.bool)
    lab[::3] = True
    lab_logits = torch.randn(feats_t.shape[0], b, known)
    return StepContext({"feats": feats_s}, {"feats": feats_t, "lab": lab_logits}, lab,
                       torch.where(lab, 0, -1), idx, None, 0)


# --- end to end --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fast_teacher(digits):
    torch.set_num_threads(1)
    cfg = apply_overrides(preset("digits"), FAST)
    stage = Pretrain(cfg, digits)
    stage.run()
    return cfg, stage.teacher_checkpoint()


@pytest.mark.parametrize("extra", [[], ["relation.grad=true", "relation.form=nce", "relation.samples=all"]])
def test_resume_gives_identical_metrics(digits, fast_teacher, tmp_path, extra):
    cfg, teacher = fast_teacher
    cfg = apply_overrides(cfg, ["discover.relation=crcd", *extra])
    full = list(Discover(cfg, teacher, digits))
    first = Discover(cfg, teacher, digits)
    # The term holds projections (in the optimizer) and buffers, never the teacher.
    names = {n for n, _ in first.relation.named_parameters()}
    assert names and all(n.split(".")[1] in ("proj_s", "proj_t") for n in names)
    opt_params = {id(p) for g in first.opt.param_groups for p in g["params"]}
    assert not any(id(p) in opt_params for p in first.teacher.parameters())
    rest = resumed_after(first, digits, str(tmp_path / "d.pt"), 2)
    assert [m["epoch"] for m in rest] == [3, 4]
    assert untimed(rest[-1]) == untimed(full[-1])
    assert "rel/crcd/acc" in full[-1] and ("rel/crcd/grad_acc" in full[-1]) == bool(extra)


def test_cli_run_completes(tmp_path):
    metrics = cli_run(tmp_path, "crcd")
    assert 0 <= metrics["novel/train/acc"] <= 1 and metrics["rel/crcd/student"] > 0
