"""REFILLED (relation `refilled`): each formula against a naive float64 computation written
apart from the implementation, the NCD tuple facts, identity, label hygiene, the centres,
options and an end-to-end run on digits."""
from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch
import torch.nn.functional as F

from crkd import Discover, Pretrain, apply_overrides, preset
from crkd.errors import ConfigError
from crkd.losses.refilled import centre_kd, pairwise_distances, tuple_facts, tuple_kl
from crkd.relations import RELATIONS, Dims, SetupData, StepContext
from crkd.relations.refilled import RefilledOptions
from tiny import cli_run, fast

FAST = fast(4)


def batch(b=8, views=2, known=3, novel=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    lab = torch.rand(b, generator=g) < 0.5
    lab[:2] = torch.tensor([True, False])
    true_y = torch.where(lab, torch.randint(0, known, (b,), generator=g),
                         known + torch.randint(0, novel, (b,), generator=g))
    y = torch.where(lab, true_y, -1)
    pseudo = torch.randint(0, novel, (views, b), generator=g)
    sure = torch.rand(views, b, generator=g) < 0.7
    return lab, y, true_y, pseudo, sure


# --- naive references ---------------------------------------------------------------------

def naive_pairs(lab, y, pseudo, sure):
    """Sets of (i, j) positive / negative pairs over the views, rule by rule."""
    views, b = pseudo.shape
    pos, neg = set(), set()
    for i in range(views * b):
        for j in range(views * b):
            vi, si = divmod(i, b)
            vj, sj = divmod(j, b)
            if i == j:
                continue
            if si == sj:                       # two views of one image
                pos.add((i, j))
            elif bool(lab[si]) != bool(lab[sj]):  # known vs novel
                neg.add((i, j))
            elif lab[si]:                      # two labeled samples
                (pos if int(y[si]) == int(y[sj]) else neg).add((i, j))
            elif sure[vi, si] and sure[vj, sj]:  # two unlabeled views with usable pseudo-labels
                (pos if int(pseudo[vi, si]) == int(pseudo[vj, sj]) else neg).add((i, j))
    return pos, neg


def naive_tuple_loss(e_s, e_t, pos, neg, anchors, tau1, margin):
    """Mean Bernoulli KL over semi-hard triplets, one triplet at a time, in float64."""
    def d(e, i, j):
        return torch.sqrt(((e[i] - e[j]) ** 2).sum())
    m = e_s.shape[0]
    terms = []
    for a in range(m):
        if not anchors[a]:
            continue
        for p in range(m):
            if (a, p) not in pos:
                continue
            for n in range(m):
                if (a, n) not in neg:
                    continue
                d_ap, d_an = d(e_s, a, p), d(e_s, a, n)
                if not (d_ap < d_an < d_ap + margin):
                    continue
                p_s = torch.sigmoid((d_an - d_ap) / tau1)
                p_t = torch.sigmoid((d(e_t, a, n) - d(e_t, a, p)) / tau1)
                terms.append(p_t * torch.log(p_t / p_s) + (1 - p_t) * torch.log((1 - p_t) / (1 - p_s)))
    return (torch.stack(terms).mean() if terms else e_s.sum() * 0), len(terms)


def to_mask(pairs, m):
    out = torch.zeros(m, m, dtype=torch.bool)
    for i, j in pairs:
        out[i, j] = True
    return out


# --- tuple matching ---------------------------------------------------------------------------

def test_tuple_set_equals_naive_ncd_facts():
    for seed in range(3):
        lab, y, _, pseudo, sure = batch(b=10, views=2, seed=seed)
        pos, neg = tuple_facts(lab, y, pseudo, sure, num_known=3)
        want_pos, want_neg = naive_pairs(lab, y, pseudo, sure)
        assert {tuple(p) for p in pos.nonzero().tolist()} == want_pos
        assert {tuple(p) for p in neg.nonzero().tolist()} == want_neg
        assert not (pos & neg).any()


@pytest.mark.parametrize("compact,max_elems", [(True, 1 << 24), (False, 1 << 24), (False, 50), (True, 50)])
def test_tuple_loss_equals_naive_triplet_loop(compact, max_elems):
    torch.manual_seed(0)
    lab, y, _, pseudo, sure = batch(b=8, views=2, seed=1)
    pos, neg = tuple_facts(lab, y, pseudo, sure, num_known=3)
    m = pos.shape[0]
    anchors = ~lab.repeat(2)
    anchors[0] = True
    e_t = F.normalize(torch.randn(m, 5, dtype=torch.float64), dim=-1)
    e_s64 = F.normalize(e_t + 0.4 * torch.randn(m, 5, dtype=torch.float64), dim=-1).requires_grad_()
    want, n = naive_tuple_loss(e_s64, e_t, set(map(tuple, pos.nonzero().tolist())),
                               set(map(tuple, neg.nonzero().tolist())), anchors, 0.5, 0.2)
    want.backward()
    assert n > 20

    e_s = e_s64.detach().float().requires_grad_()
    got, count = tuple_kl(pairwise_distances(e_s), pairwise_distances(e_t.float()), pos, neg, anchors,
                          tau1=0.5, margin=0.2, max_positives=m, max_elems=max_elems, compact=compact)
    got.backward()
    assert int(count) == n
    assert math.isclose(got.item(), want.item(), rel_tol=1e-4)
    scale = e_s64.grad.abs().max().item()
    assert torch.allclose(e_s.grad.double(), e_s64.grad, atol=1e-4 * scale)


def test_tuple_loss_caps_positives_per_anchor():
    torch.manual_seed(0)
    lab, y, _, pseudo, sure = batch(b=16, seed=2)
    pos, neg = tuple_facts(lab, y, pseudo, torch.ones_like(sure), num_known=3)
    e = F.normalize(torch.randn(32, 4), dim=-1)
    d = pairwise_distances(e)
    anchors = torch.ones(32, dtype=torch.bool)
    full = tuple_kl(d, d, pos, neg, anchors, max_positives=32)[1]
    capped = tuple_kl(d, d, pos, neg, anchors, max_positives=1)[1]
    assert 0 < capped < full


def test_zero_with_zero_gradient_at_identity():
    torch.manual_seed(0)
    lab, y, _, pseudo, sure = batch(b=12)
    pos, neg = tuple_facts(lab, y, pseudo, sure, num_known=3)
    e = F.normalize(torch.randn(24, 6), dim=-1).requires_grad_()
    loss, count = tuple_kl(pairwise_distances(e), pairwise_distances(e.detach()), pos, neg,
                           torch.ones(24, dtype=torch.bool), tau1=1.0, margin=0.4)
    loss.backward()
    assert count > 0 and loss.item() == 0 and e.grad.abs().max().item() == 0

    centres = F.normalize(torch.randn(3, 6), dim=-1)
    logits = (e.detach() @ centres.t()).requires_grad_()
    kl = centre_kd(e.detach(), centres, logits, temp=0.2)
    kl.backward()
    assert abs(kl.item()) < 1e-6 and logits.grad.abs().max().item() < 1e-6


# --- the term -----------------------------------------------------------------------------

def make_term(opts=None, known=3, novel=3, d=6):
    dims = Dims(known, novel, d, num_train=100, tau=0.1, epochs=10)
    return RELATIONS["refilled"](opts or RefilledOptions(), dims)


def context(term, lab, y, pseudo, feats_s, feats_t, lab_logits, known=3, novel=3, heads=2):
    views, b = pseudo.shape
    targets = torch.zeros(views, heads, b, known + novel)
    targets[..., known:] = F.one_hot(pseudo, novel).float().unsqueeze(1) * (~lab).float().view(1, 1, b, 1)
    targets[..., :known] = (F.one_hot(torch.where(lab, y, 0), known).float() * lab.float().unsqueeze(1))
    return StepContext({"feats": feats_s, "lab": lab_logits}, {"feats": feats_t}, lab, y,
                       torch.arange(b), targets, 0)


def test_term_is_zero_with_zero_gradient_when_student_matches_teacher():
    torch.manual_seed(0)
    term = make_term(RefilledOptions(samples="all"))
    term.centres.copy_(F.normalize(torch.randn(3, 6), dim=-1))
    lab, y, _, pseudo, _ = batch(b=10)
    feats = torch.randn(2, 10, 6).requires_grad_()
    # Student known-head logits equal to the teacher's nearest-centre scores.
    logits = (F.normalize(feats.detach(), dim=-1) @ term.centres.t()).requires_grad_()
    loss, logs = term(context(term, lab, y, pseudo, feats, feats.detach(), logits))
    loss.backward()
    assert logs["rel/refilled/triplets"] > 0
    assert abs(loss.item()) < 1e-6
    assert feats.grad.abs().max().item() < 1e-6 and logits.grad.abs().max().item() < 1e-6


def test_term_never_reads_novel_labels():
    torch.manual_seed(0)
    term = make_term()
    term.centres.copy_(F.normalize(torch.randn(3, 6), dim=-1))
    lab, y, true_y, pseudo, _ = batch(b=10)
    feats_s, feats_t, logits = torch.randn(2, 10, 6), torch.randn(2, 10, 6), torch.randn(2, 10, 3)
    torch.manual_seed(1)  # the positives' random order (a subset where there are too many)
    ref = term(context(term, lab, y, pseudo, feats_s, feats_t, logits))
    other_hidden = torch.where(lab, true_y, -1)  # what the loop hands over, whatever the truth
    assert torch.equal(other_hidden, y)
    torch.manual_seed(1)
    leaked = term(context(term, lab, true_y, pseudo, feats_s, feats_t, logits))  # even if it could
    assert ref[0].item() == leaked[0].item()
    assert {k: v.item() for k, v in ref[1].items()} == {k: v.item() for k, v in leaked[1].items()}


def test_centres_equal_naive_per_class_mean():
    torch.manual_seed(0)
    term = make_term()
    feats = torch.randn(20, 6, dtype=torch.float64)
    labels = torch.arange(20) % 3
    data = SetupData(labeled=None, labels=labels, labeled_index=torch.arange(20), unlabeled=None,
                     unlabeled_index=torch.arange(20, 30), features=lambda model, images: feats.float())
    term.setup(None, data)
    for k in range(3):
        rows = [feats[i] / feats[i].norm() for i in range(20) if labels[i] == k]
        mean = sum(rows) / len(rows)
        assert torch.allclose(term.centres[k].double(), mean / mean.norm(), atol=1e-6)
    assert "centres" in term.state_dict()


def test_classifier_part_matches_naive_kl():
    torch.manual_seed(0)
    e_t = F.normalize(torch.randn(2, 5, 4, dtype=torch.float64), dim=-1)
    centres = F.normalize(torch.randn(3, 4, dtype=torch.float64), dim=-1)
    logits = torch.randn(2, 5, 3, dtype=torch.float64)
    mask = torch.tensor([True, False, True, True, False])
    total, n = 0.0, 0
    for v in range(2):
        for i in range(5):
            if not mask[i]:
                continue
            q = [math.exp(float(e_t[v, i] @ centres[k]) / 0.2) for k in range(3)]
            p = [math.exp(float(logits[v, i, k]) / 0.2) for k in range(3)]
            q, p = [x / sum(q) for x in q], [x / sum(p) for x in p]
            total += sum(q[k] * math.log(q[k] / p[k]) for k in range(3))
            n += 1
    assert math.isclose(centre_kd(e_t, centres, logits, 0.2, mask).item(), total / n, rel_tol=1e-5)


def test_scale_and_options():
    assert make_term().scale(7) == 1.0
    assert math.isclose(make_term(RefilledOptions(anneal=0.05)).scale(10), math.exp(-0.5))
    cfg = apply_overrides(preset("digits"), ["discover.relation=refilled", "relation.tau1=2", "relation.samples=all"])
    assert cfg.relation.tau1 == 2.0 and cfg.relation.samples == "all"
    for key, value, words in [("tau1", 0.0, "relation.tau1 must be > 0"),
                              ("margin", -1.0, "relation.margin must be > 0"),
                              ("confident", 2.0, "relation.confident must be in [0, 1]"),
                              ("samples", "some", "relation.samples must be one of unlabeled, all")]:
        with pytest.raises(ConfigError, match=re.escape(words)) as e:
            RefilledOptions(**{key: value}).validate()
        assert "\n" not in str(e.value)


# --- end to end ---------------------------------------------------------------------------

def test_discovery_hides_novel_labels_from_the_term(digits):
    """Scrambling the novel classes' training labels changes nothing the term computes."""
    torch.set_num_threads(1)
    cfg = apply_overrides(preset("digits"), FAST + ["discover.relation=refilled", "discover.epochs=1"])
    pre = Pretrain(cfg, digits)
    pre.run()
    teacher = pre.teacher_checkpoint()
    novel = ~digits.train_lab
    y = digits.train_y.clone()
    y[novel] = digits.num_known + (y[novel] - digits.num_known + 1) % digits.num_novel
    scrambled = dataclasses.replace(digits, train_y=y)
    a = Discover(cfg, teacher, digits).run()
    b = Discover(cfg, teacher, scrambled).run()
    keys = [k for k in a if k.startswith(("loss/", "rel/"))]
    assert "rel/refilled/tuple" in keys and a["rel/refilled/triplets"] > 0
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}


def test_cli_run_completes(tmp_path):
    metrics = cli_run(tmp_path, "refilled")
    assert 0 <= metrics["novel/train/acc"] <= 1
    assert metrics["rel/refilled/tuple"] > 0 and metrics["rel/refilled/cls"] > 0
