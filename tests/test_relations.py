"""The relation-term plug-in interface and the fidelity rules of the discovery loop:
a new term needs no edit of the loop, its options, parameters and state go where
they should, no novel label reaches it, crkd-code equals the public code's formula."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from crkd import Discover, Pretrain, apply_overrides, load_config, preset
from crkd.config import overcluster_factor
from crkd.data.benchmarks import _tensor_data
from crkd.losses import relation_kd
from crkd.models import NCDModel
from crkd.relations import RELATIONS, Options, Relation
from tiny import cli_run, fast

FAST = fast(3)


@pytest.fixture(scope="module")
def teacher(digits):
    stage = Pretrain(apply_overrides(preset("digits"), FAST), digits)
    stage.run()
    return stage.teacher_checkpoint()


# --- crkd-code against a transcription of the public code ------------------------------

def code_kd(origin_logits, new_logits, mask_lab, tau, T):
    """kleinzcy/Cr-KD-NCD model/losses.py `KD`, transcribed in float64 (then .mean() over heads
    as rKD.py does). origin: [V, H, B, C_l] teacher; new: [V, H, B, C_l + C_u] student."""
    nlc = origin_logits.shape[-1]
    origin_logits, new_logits = origin_logits.double() / tau, new_logits.double() / tau
    preds = torch.softmax(origin_logits[:, :, ~mask_lab] / T, dim=-1)
    pseudo_logits = new_logits[:, :, ~mask_lab]
    pseudo_preds = torch.softmax(pseudo_logits[:, :, :, :nlc] / T, dim=-1)
    pseudo_preds_all = torch.softmax(pseudo_logits / T, dim=-1)
    weight = torch.sum(pseudo_preds_all[:, :, :, :nlc], dim=-1, keepdim=True)
    weight = weight / torch.mean(weight)
    loss = torch.mean(torch.sum(-torch.log(pseudo_preds) * preds * (T ** 2) * weight, dim=-1), dim=[0, 2])
    return loss.mean()


@pytest.mark.parametrize("t,tau", [(4.0, 0.1), (2.0, 0.3)])
def test_crkd_code_matches_the_public_code(t, tau):
    g = torch.Generator().manual_seed(0)
    v, h, b, c_l, c_u = 2, 3, 24, 5, 4
    teacher = torch.rand(v, h, b, c_l, generator=g, dtype=torch.float64) * 2 - 1
    student = (torch.rand(v, h, b, c_l + c_u, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    lab = torch.rand(b, generator=g) < 0.4
    ref_student = student.detach().clone().requires_grad_()
    ours = relation_kd(teacher, student, t, tau, form="ce", eta_at="tau_t", weight_norm="global", mask=~lab)
    ref = code_kd(teacher, ref_student, lab, tau, t)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-9, abs=1e-9)
    ours.backward()
    ref.backward()
    assert torch.allclose(student.grad, ref_student.grad, rtol=1e-9, atol=1e-12)
    # float32, as training runs it: within 1e-6
    ours32 = relation_kd(teacher.float(), student.detach().float(), t, tau, form="ce", eta_at="tau_t",
                         weight_norm="global", mask=~lab)
    assert ours32.item() == pytest.approx(ref.item(), rel=1e-6)
    # the paper's per-(view, head) normalisation differs from it
    paper = relation_kd(teacher, student.detach(), t, tau, form="ce", eta_at="tau_t", mask=~lab)
    assert paper.item() != pytest.approx(ref.item(), rel=1e-6)


def test_crkd_code_is_a_name_with_the_code_defaults():
    cfg = load_config(benchmark="digits", overrides=["discover.relation=crkd-code"])
    r = cfg.relation
    assert (r.form, r.eta_at, r.weight_norm, r.t) == ("ce", "tau_t", "global", 4.0)
    assert load_config(benchmark="digits").relation.form == "kl"


# --- a new term plugs in without touching the loop -------------------------------------

@dataclass
class CountOptions(Options):
    w: float = 1.0

    def validate(self):
        self.check(w="nonnegative")


class Counting(Relation):
    """A stateful term with a learnable parameter and a buffer, and a spy on what it sees."""
    Options = CountOptions
    seen: list = []

    def __init__(self, opts, dims):
        super().__init__(opts, dims)
        self.scale_param = torch.nn.Parameter(torch.ones(()))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def setup(self, teacher, data):
        Counting.seen.append(("setup", data.labels.clone(), len(data.unlabeled)))

    def forward(self, ctx):
        Counting.seen.append(("step", ctx.y.clone(), ctx.lab.clone()))
        self.steps += 1
        feats = ctx.student["feats"]
        loss = self.opts.w * self.scale_param * (feats - ctx.teacher["feats"]).pow(2).mean()
        return loss, {"rel/count/steps": self.steps.float()}


@pytest.fixture
def counting(monkeypatch):
    monkeypatch.setitem(RELATIONS, "counting", Counting)
    Counting.seen = []
    return Counting


def test_new_term_options_parameters_and_state(digits, teacher, counting, tmp_path):
    cfg = apply_overrides(preset("digits"), FAST + ["discover.relation=counting", "relation.w=0.5"])
    assert isinstance(cfg.relation, CountOptions) and cfg.relation.w == 0.5
    assert "relation.w" in cfg.flat()
    with pytest.raises(Exception, match="relation.w must be >= 0"):
        load_config(benchmark="digits", overrides=["discover.relation=counting", "relation.w=-1"])
    stage = Discover(cfg, teacher, digits)
    in_opt = {id(p) for g in stage.opt.param_groups for p in g["params"]}
    assert id(stage.relation.scale_param) in in_opt  # a learnable part of the term is trained
    before = stage.relation.scale_param.item()
    it = iter(stage)
    next(it)
    assert stage.relation.scale_param.item() != before
    saved = stage.relation.steps.item()
    assert saved > 0 and stage.state_dict()["relation"]["steps"].item() == saved
    stage.save(str(tmp_path / "d.pt"))
    rest = list(it)
    resumed = Discover.from_checkpoint(str(tmp_path / "d.pt"), digits)
    assert resumed.relation.steps.item() == saved
    again = list(resumed)
    strip = lambda m: {k: v for k, v in m.items() if not k.startswith("time/")}  # noqa: E731
    assert strip(again[-1]) == strip(rest[-1])
    assert resumed.relation.steps.item() == stage.relation.steps.item()
    # the YAML round trip keeps the term and its options
    from crkd import Config
    assert Config.from_yaml(cfg.to_yaml()).relation == cfg.relation


def test_no_novel_label_reaches_a_term(digits, teacher, counting):
    cfg = apply_overrides(preset("digits"), FAST + ["discover.relation=counting"])
    stage = Discover(cfg, teacher, digits)
    next(iter(stage))
    setup = [s for s in Counting.seen if s[0] == "setup"]
    steps = [s for s in Counting.seen if s[0] == "step"]
    assert len(setup) == 1 and steps
    labels = setup[0][1]
    assert len(labels) == int(digits.train_lab.sum()) and int(labels.max()) < digits.num_known
    for _, y, lab in steps:
        assert (y[~lab] == -1).all() and (y[lab] >= 0).all() and (y[lab] < digits.num_known).all()
    # the loop's own label table holds no novel label either
    assert (stage.labels[~stage.lab] == -1).all()


# --- the loop's fidelity rules -------------------------------------------------------------

def test_uno_gets_unos_overclustering_heads():
    for bench, factor in (("cifar10-5-5", 10), ("cifar100-80-20", 5), ("cifar100-50-50", 3), ("imagenet-a", 4)):
        cfg = apply_overrides(preset(bench), ["discover.relation=uno"])
        assert overcluster_factor(cfg, 0) == factor
        assert overcluster_factor(apply_overrides(preset(bench), ["discover.relation=none"]), 0) == 0
        assert overcluster_factor(apply_overrides(preset(bench), ["discover.relation=crkd"]), 0) == 0
        explicit = apply_overrides(preset(bench), ["discover.relation=uno", "model.overcluster=2"])
        assert overcluster_factor(explicit, 0) == 2  # an explicit factor wins
    npz = apply_overrides(preset("npz"), ["discover.relation=uno"])
    assert [overcluster_factor(npz, n) for n in (5, 20, 30, 50)] == [10, 5, 4, 3]


def test_cosine_logits_are_float32_under_autocast():
    cfg = apply_overrides(preset("digits"), FAST).model
    torch.manual_seed(0)
    model = NCDModel(cfg, 1, 5, 5, overcluster=2).eval()
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        full = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(x)
    for k in ("lab", "unlab", "over"):
        assert mixed[k].dtype == torch.float32
        # the encoder ran in bf16, the cosine did not: the scores stay on the unit scale
        assert mixed[k].abs().max() <= 1 + 1e-6
        assert torch.allclose(mixed[k], full[k], atol=0.05)


def test_each_view_through_batchnorm_on_its_own(digits, teacher):
    stage = Discover(apply_overrides(preset("digits"), FAST), teacher, digits)
    x, _ = next(stage.images.batches(64, shuffle=True))
    views = stage.aug.large(x)
    out = stage._outputs(views, stage.model)
    with torch.no_grad():
        alone = [stage.model(v) for v in views]
    for i, o in enumerate(alone):
        assert torch.allclose(out["lab"][i], o["lab"], atol=1e-6)
        assert torch.allclose(out["unlab"][i], o["unlab"], atol=1e-6)
    joint = stage._outputs(views, stage.model, joint=True)
    assert not torch.allclose(joint["lab"], out["lab"], atol=1e-4)  # one batch of 2B differs


def test_best_head_by_the_normal_heads_alone(digits, teacher):
    stage = Discover(apply_overrides(preset("digits"), FAST), teacher, digits)
    assert stage.model.head_over is not None  # the digits preset keeps over-clustering heads
    x, idx = next(stage.images.batches(128, shuffle=True))
    fixed = [stage.aug.plain(x), stage.aug.plain(x).flip(-1)]
    stage.aug.large, stage.aug.small = (lambda _: fixed), (lambda _: [])
    y, lab = stage.labels[idx], stage.lab[idx]
    stage.model.normalize_prototypes()
    with torch.no_grad():
        large = stage._outputs(fixed, stage.model)
        expect = stage._swapped("unlab", large, None, y, lab)[0].mean(1)
    stage.head_loss.zero_()
    stage.step(x, idx, 0)
    assert torch.allclose(stage.head_loss, expect, atol=1e-6)


def test_every_accuracy_has_best_head_and_average(digits, teacher):
    m = next(iter(Discover(apply_overrides(preset("digits"), FAST), teacher, digits)))
    for key in ("novel/train", "novel/test", "test/all", "test/old", "test/new"):
        assert f"{key}/acc" in m and f"{key}/acc_avg" in m


def _imbalanced():
    """8 known classes of 20 images, 2 novel of 10: the unlabeled set is 8x smaller."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), [20] * 8 + [10] * 2)
    x = rng.integers(0, 255, (len(y), 8, 8), dtype=np.uint8)
    return _tensor_data("npz", x, y, x, y, list(range(8)), [8, 9], [str(i) for i in range(10)])


def test_paired_batches_are_half_labeled_with_the_unlabeled_set_cycled():
    data = _imbalanced()
    cfg = apply_overrides(preset("digits"), FAST + ["discover.sampling=paired", "discover.batch_size=32",
                                                    "data.benchmark=npz"])
    pre = Pretrain(cfg, data)
    stage = Discover(cfg, pre.teacher_checkpoint(), data)
    batches = [idx for _, idx in stage._batches()]
    assert len(batches) == 160 // 16
    lab = data.train_lab
    seen_lab, seen_unlab = [], []
    for idx in batches:
        assert len(idx) == 32 and lab[idx[:16]].all() and not lab[idx[16:]].any()
        seen_lab += idx[:16].tolist()
        seen_unlab += idx[16:].tolist()
    assert sorted(seen_lab) == lab.nonzero().squeeze(1).tolist()  # every labeled image once
    counts = np.bincount(seen_unlab)[~lab.numpy()]
    assert (counts == 8).all()  # every unlabeled image 160 / 20 = 8 times
    assert np.isfinite(next(iter(stage))["loss/total"])


@pytest.mark.parametrize("name", ["uno", "none", "crkd-code"])
def test_cli_run_completes(name, tmp_path):
    """`python -m crkd run --set discover.relation=NAME` for the methods whose own test files
    do not run it (crkd is the default of tests/test_train.py)."""
    metrics = cli_run(tmp_path, name)
    assert 0 <= metrics["novel/train/acc"] <= 1
    assert (metrics["loss/rel"] > 0) == (name == "crkd-code")
