"""RKD, SP and PKT (crkd.losses.relational, crkd.relations.rkd / sp / pkt): each formula
against a naive float64 computation over explicit pairs and triplets, zero with zero
gradient at student == teacher, masks equal to subsets, options, and end-to-end runs."""
from __future__ import annotations

import json
import math

import pytest
import torch

from crkd import apply_overrides, preset, validate
from crkd.errors import ConfigError
from crkd.losses import pkt_loss, rkd_angle, rkd_distance, sp_loss
from crkd.relations import RELATIONS, Dims, StepContext
from tiny import cli_run

NAMES = ["rkd", "sp", "pkt"]


# --- naive references: one view, Python loops, float64 -----------------------------

def smooth_l1(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def dist(u, v) -> float:
    return math.sqrt(sum((a - b) ** 2 for a, b in zip(u, v)))


def cosine(u, v) -> float:
    return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


def naive_rkd_distance(s, t) -> float:
    n = len(s)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    ds = [dist(s[i], s[j]) for i, j in pairs]
    dt = [dist(t[i], t[j]) for i, j in pairs]
    ms, mt = sum(ds) / len(ds), sum(dt) / len(dt)
    return sum(smooth_l1(a / ms - b / mt) for a, b in zip(ds, dt)) / len(pairs)


def naive_angle(x, a, j, k) -> float:
    return cosine([p - q for p, q in zip(x[j], x[a])], [p - q for p, q in zip(x[k], x[a])])


def naive_rkd_angle(s, t, anchors=None) -> float:
    n = len(s)
    anchors = range(n) if anchors is None else anchors
    terms = [smooth_l1(naive_angle(s, a, j, k) - naive_angle(t, a, j, k))
             for a in anchors for j in range(n) for k in range(n) if len({a, j, k}) == 3]
    return sum(terms) / len(terms)


def naive_sp(s, t) -> float:
    def rows(f):
        g = [[sum(a * b for a, b in zip(u, v)) for v in f] for u in f]
        return [[x / math.sqrt(sum(y * y for y in row)) for x in row] for row in g]
    gs, gt = rows(s), rows(t)
    return sum(sum((a - b) ** 2 for a, b in zip(rs, rt)) for rs, rt in zip(gs, gt)) / len(s)


def naive_pkt(s, t) -> float:
    def probs(f):
        sim = [[(cosine(u, v) + 1) / 2 for v in f] for u in f]
        return [[x / sum(row) for x in row] for row in sim]
    ps, pt = probs(s), probs(t)
    return sum(sum(b * math.log(b / a) for a, b in zip(rs, rt)) for rs, rt in zip(ps, pt)) / len(s)


def per_view(naive, s: torch.Tensor, t: torch.Tensor, **kw) -> float:
    """Mean over the leading (view) dim of the one-view naive loss."""
    return sum(naive(a.tolist(), b.tolist(), **kw) for a, b in zip(s, t)) / len(s)


def feats(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


# --- formulas ---------------------------------------------------------------------

def test_rkd_distance_matches_naive():
    s, t = feats(2, 7, 5, seed=1), feats(2, 7, 4, seed=2)  # dimensions may differ
    assert rkd_distance(s, t).item() == pytest.approx(per_view(naive_rkd_distance, s, t), rel=1e-9)
    # large differences reach SmoothL1's linear part
    s2 = torch.cat([s[..., :1] * 30, s[..., 1:]], -1)
    assert rkd_distance(s2, t).item() == pytest.approx(per_view(naive_rkd_distance, s2, t), rel=1e-9)


def test_rkd_angle_matches_naive():
    s, t = feats(2, 6, 4, seed=3), feats(2, 6, 3, seed=4)
    assert rkd_angle(s, t).item() == pytest.approx(per_view(naive_rkd_angle, s, t), rel=1e-9)
    anchors = torch.tensor([[0, 4], [5, 2]])
    want = sum(naive_rkd_angle(a.tolist(), b.tolist(), anchors=c.tolist()) for a, b, c in zip(s, t, anchors)) / 2
    assert rkd_angle(s, t, anchors=anchors).item() == pytest.approx(want, rel=1e-9)


def test_rkd_angle_anchor_subsets_are_unbiased():
    # Every anchor has the same number of triplets: the full loss is the mean of the
    # one-anchor losses, so uniformly drawn anchors estimate it without bias.
    s, t = feats(1, 8, 3, seed=5), feats(1, 8, 3, seed=6)
    mask = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1], dtype=torch.bool)
    single = [rkd_angle(s, t, mask, torch.tensor([[a]])).item() for a in mask.nonzero().flatten().tolist()]
    assert sum(single) / len(single) == pytest.approx(rkd_angle(s, t, mask).item(), rel=1e-9)
    assert rkd_angle(s, t, mask, torch.tensor([[1]])).item() == 0.0  # an excluded anchor counts for nothing


def test_sp_matches_naive():
    s, t = feats(2, 6, 10, seed=7).relu(), feats(2, 6, 12, seed=8).relu()  # post-ReLU maps, flattened
    assert sp_loss(s, t).item() == pytest.approx(per_view(naive_sp, s, t), rel=1e-9)


def test_pkt_matches_naive():
    s, t = feats(2, 7, 5, seed=9), feats(2, 7, 6, seed=10)
    assert pkt_loss(s, t).item() == pytest.approx(per_view(naive_pkt, s, t), rel=1e-9)


def test_normalisations_relative_to_repdistiller():
    # RepDistiller averages N^2 terms; these losses average N rows: a factor N apart.
    s, t = feats(16, 9, seed=11), feats(16, 9, seed=12)
    gs, gt = (torch.nn.functional.normalize(f @ f.t()) for f in (s, t))
    assert sp_loss(s, t).item() == pytest.approx(16 * ((gt - gs) ** 2).sum().item() / 16 ** 2, rel=1e-9)
    ns, nt = (torch.nn.functional.normalize(f, dim=1) for f in (s, t))
    ps, pt = (((f @ f.t() + 1) / 2) for f in (ns, nt))
    ps, pt = ps / ps.sum(1, keepdim=True), pt / pt.sum(1, keepdim=True)
    assert pkt_loss(s, t).item() == pytest.approx(16 * (pt * (pt / ps).log()).mean().item(), rel=1e-9)


# --- identity: zero loss, zero gradient ------------------------------------------

LOSSES = {
    "rkd_distance": rkd_distance,
    "rkd_angle": rkd_angle,
    "sp": lambda s, t, mask=None: sp_loss(s.relu(), t.relu(), mask),
    "pkt": pkt_loss,
}


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_with_zero_gradient_at_identity(name, dtype):
    t = feats(2, 12, 8, seed=13, dtype=dtype)
    s = t.clone().requires_grad_(True)
    mask = torch.arange(12) % 3 != 0
    for m in (None, mask):
        loss = LOSSES[name](s, t, mask=m)
        (grad,) = torch.autograd.grad(loss, s)
        assert loss.item() == 0.0
        # RKD and SP: bitwise zero (SmoothL1 / squares of exact zeros). PKT: the KL's gradient
        # cancels only analytically (through the row normalisation): zero up to rounding.
        assert grad.abs().max().item() < (1e-8 if dtype == torch.float32 else 1e-15)


def context(student: dict, teacher: dict, lab: torch.Tensor) -> StepContext:
    b = lab.shape[0]
    return StepContext(student, teacher, lab, torch.where(lab, 0, -1), torch.arange(b),
                       torch.zeros(2, 1, b, 3), epoch=0)


def make(name: str, **opts):
    cls = RELATIONS[name]
    return cls(cls.Options(**opts), Dims(2, 3, 8, 100, 0.1, 10))


@pytest.mark.parametrize("name", NAMES)
def test_relation_zero_at_identity_and_positive_otherwise(name):
    lab = torch.arange(10) < 4
    maps = feats(2, 10, 4, 3, 3, seed=14, dtype=torch.float32).relu()
    teacher = {"feats": maps.mean((3, 4)), "maps": maps}
    student = {k: v.clone().requires_grad_(True) for k, v in teacher.items()}
    term = make(name)
    loss, logs = term(context(student, teacher, lab))
    loss.backward()
    assert loss.item() == 0.0 and all(v.item() == 0.0 for v in logs.values())
    assert all(k.startswith(f"rel/{name}/") for k in logs)
    used = "maps" if "maps" in term.uses else "feats"
    moved = {k: (v + 0.3 * feats(*v.shape, seed=15, dtype=torch.float32).abs()).requires_grad_(True)
             for k, v in teacher.items()}
    loss_moved = term(context(moved, teacher, lab))[0]
    loss_moved.backward()
    assert loss_moved.item() > 0
    # zero up to float32 rounding (PKT's gradient cancels analytically, not bitwise)
    assert student[used].grad.abs().max().item() < 1e-4 * moved[used].grad.abs().max().item()


# --- masks ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", LOSSES)
def test_mask_equals_subset(name):
    s, t = feats(2, 11, 6, seed=16), feats(2, 11, 6, seed=17)
    s.requires_grad_(True)
    mask = torch.tensor([1, 0, 0, 1, 1, 0, 1, 1, 0, 1, 1], dtype=torch.bool)
    loss = LOSSES[name](s, t, mask=mask)
    assert loss.item() == pytest.approx(LOSSES[name](s[:, mask], t[:, mask]).item(), rel=1e-9)
    (grad,) = torch.autograd.grad(loss, s)
    assert grad[:, ~mask].abs().max().item() < 1e-12  # excluded samples get no gradient


@pytest.mark.parametrize("name", NAMES)
def test_samples_option_selects_unlabeled(name):
    lab = torch.tensor([1, 0, 1, 0, 0, 1, 0, 0, 1, 0], dtype=torch.bool)
    s = feats(2, 10, 4, 2, 2, seed=18, dtype=torch.float32).relu()
    t = feats(2, 10, 4, 2, 2, seed=19, dtype=torch.float32).relu()
    opts = {"angle_anchors": 10} if name == "rkd" else {}
    full = lambda m: {"feats": m.mean((3, 4)), "maps": m}  # noqa: E731
    unlab = make(name, samples="unlabeled", **opts)(context(full(s), full(t), lab))[0]
    subset = make(name, samples="all", **opts)(context(full(s[:, ~lab]), full(t[:, ~lab]), lab[~lab]))[0]
    assert unlab.item() == pytest.approx(subset.item(), rel=1e-5)


def test_rkd_anchors_are_distinct_included_samples():
    term = make("rkd", angle_anchors=4, samples="unlabeled")
    lab = torch.tensor([1, 0, 1, 0, 0, 1, 0, 1, 1, 1], dtype=torch.bool)
    for _ in range(20):
        a = term.anchors(~lab, 2)
        assert a.shape == (2, 4)
        assert all(len(set(row)) == 4 and not lab[row].any() for row in a.tolist())
    assert make("rkd", angle_anchors=64).anchors(~lab, 2) is None  # as many as samples: all, exact


# --- options ---------------------------------------------------------------------

@pytest.mark.parametrize("name,setting,needle", [
    ("rkd", "relation.angle_anchors=0", "relation.angle_anchors must be >= 1"),
    ("rkd", "relation.w_angle=-1", "relation.w_angle must be >= 0"),
    ("rkd", "relation.samples=labeled", "relation.samples must be one of all, unlabeled"),
    ("sp", "relation.samples=some", "relation.samples must be one of all, unlabeled"),
    ("pkt", "relation.eps=0", "relation.eps must be > 0"),
])
def test_bad_options_one_line(name, setting, needle):
    cfg = apply_overrides(preset("digits"), [f"discover.relation={name}", setting])
    with pytest.raises(ConfigError, match=needle) as e:
        validate(cfg)
    assert "\n" not in str(e.value)


def test_rkd_needs_a_part():
    cfg = apply_overrides(preset("digits"), ["discover.relation=rkd", "relation.w_dist=0", "relation.w_angle=0"])
    with pytest.raises(ConfigError, match="relation.w_dist and relation.w_angle are both 0"):
        validate(cfg)


def test_defaults():
    assert vars(RELATIONS["rkd"].Options()) == {"w_dist": 1.0, "w_angle": 2.0, "angle_anchors": 64, "samples": "all"}
    assert vars(RELATIONS["sp"].Options()) == {"samples": "all"}
    assert vars(RELATIONS["pkt"].Options()) == {"samples": "all", "eps": 1e-7}
    assert RELATIONS["sp"].uses == {"teacher", "maps"}


# --- end to end --------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_cli_run_completes(name, tmp_path):
    metrics = cli_run(tmp_path, name)
    assert metrics["loss/rel"] > 0 and math.isfinite(metrics["loss/rel"])
    assert any(k.startswith(f"rel/{name}/") for k in metrics)
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert sum("loss/rel" in h for h in history) == 4
