"""Batched augmentation and model pieces against direct computations."""
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from crkd import CheckpointError, preset
from crkd.data.augment import Augment, color_jitter, crop_flip, jitter_affine
from crkd.models import MultiHead, NCDModel


def test_random_crop_with_padding_is_exact():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 32, 32)
    out = crop_flip(x, 32, rrc_prob=0.0, scale=(0.5, 1.0), pad=4, flip=False)
    padded = F.pad(x, (4, 4, 4, 4))
    for i in range(64):
        # every output must be one of the 81 integer-shift crops of the padded image, exactly
        crops = padded[i].unfold(1, 32, 1).unfold(2, 32, 1)  # [3, 9, 9, 32, 32]
        diff = (crops - out[i][:, None, None]).abs().amax(dim=(0, 3, 4))
        assert diff.min() < 1e-5


def test_crops_differ_per_sample_and_flip():
    torch.manual_seed(1)
    x = torch.rand(1, 3, 16, 16).repeat(32, 1, 1, 1)
    out = crop_flip(x, 16, rrc_prob=0.5, scale=(0.3, 1.0), pad=2, flip=True)
    distinct = {tuple(o.flatten()[:20].tolist()) for o in out}
    assert len(distinct) > 20
    flipped = crop_flip(x[:1], 16, rrc_prob=0.0, scale=(1, 1), pad=0, flip=False)
    assert torch.allclose(flipped, x[:1], atol=1e-6)


def test_jitter_affine_against_torchvision():
    torch.manual_seed(2)
    x = torch.rand(6, 3, 8, 8) * 0.6 + 0.2  # away from the clamp, where the one-clamp form is exact
    one, n = torch.ones(6), torch.zeros(6)
    f = torch.tensor([0.7, 0.9, 1.0, 1.1, 1.2, 0.8])
    assert torch.allclose(jitter_affine(x, one, one, one, n), x, atol=1e-6)
    for i in range(6):
        b = jitter_affine(x, f, one, one, n)[i]
        assert torch.allclose(b, TF.adjust_brightness(x[i], f[i].item()), atol=1e-5)
        c = jitter_affine(x, one, f, one, n)[i]
        assert torch.allclose(c, TF.adjust_contrast(x[i], f[i].item()), atol=1e-5)
        s = jitter_affine(x, one, one, f, n)[i]
        assert torch.allclose(s, TF.adjust_saturation(x[i], f[i].item()), atol=1e-5)
    # hue: a rotation about the grey axis; exact against HSV at a third of a turn on
    # primaries, grey stays grey, and it moves colours the way torchvision's hue does
    prim = torch.eye(3).view(3, 3, 1, 1)
    third = torch.full((3,), 1 / 3)
    assert torch.allclose(jitter_affine(prim, one[:3], one[:3], one[:3], third),
                          torch.stack([TF.adjust_hue(p, 1 / 3) for p in prim]), atol=1e-5)
    grey = torch.rand(6, 1, 4, 4).expand(-1, 3, -1, -1)
    assert torch.allclose(jitter_affine(grey, one, one, one, torch.full((6,), 0.1)), grey, atol=1e-5)
    h = torch.tensor([0.1, -0.1, 0.05, -0.05, 0.02, 0.0])
    ref = torch.stack([TF.adjust_hue(x[i], h[i].item()) for i in range(6)])
    assert (jitter_affine(x, one, one, one, h) - ref).abs().mean() < (x - ref).abs().mean()


def test_color_jitter_grey_and_identity():
    torch.manual_seed(4)
    g = torch.rand(5, 1, 8, 8)
    assert torch.equal(color_jitter(g, 0.0, [0.4, 0.4, 0.0, 0.0]), g)
    out = color_jitter(g, 1.0, [0.4, 0.0, 0.0, 0.0])
    ratio = out / g
    assert torch.allclose(ratio.amin((1, 2, 3))[out.amax((1, 2, 3)) < 1], ratio.amax((1, 2, 3))[out.amax((1, 2, 3)) < 1], atol=1e-4)


def test_views_shapes_and_normalisation():
    cfg = preset("cifar10-5-5").aug
    aug = Augment(cfg, 3, "cpu")
    x = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    large, small = aug.large(x), aug.small(x)
    assert [v.shape for v in large] == [torch.Size([10, 3, 32, 32])] * 2
    assert [v.shape for v in small] == [torch.Size([10, 3, 18, 18])] * 2
    plain = aug.plain(x)
    expect = (x.float() / 255 - torch.tensor(cfg.mean).view(1, 3, 1, 1)) / torch.tensor(cfg.std).view(1, 3, 1, 1)
    assert torch.allclose(plain, expect, atol=1e-6)


def test_multihead_equals_separate_heads():
    torch.manual_seed(3)
    mh = MultiHead(12, 5, 3, 16, 8).train()
    x = torch.randn(20, 12)
    out = mh(x)
    for h in range(3):
        z = x @ mh.w1[h] + mh.b1[h]
        bn = F.batch_norm(z, None, None, mh.bn.weight[h * 16:(h + 1) * 16], mh.bn.bias[h * 16:(h + 1) * 16], training=True)
        z = torch.relu(bn) @ mh.w2[h] + mh.b2[h]
        expect = F.normalize(z, dim=-1) @ F.normalize(mh.prototypes[h], dim=-1).T
        assert torch.allclose(out[h], expect, atol=1e-5)
    assert out.abs().max() <= 1 + 1e-5


def test_teacher_load_is_strict_and_names_keys():
    cfg = preset("digits").model
    a = NCDModel(cfg, 1, 5, 5)
    state = a.teacher_state()
    b = NCDModel(cfg, 1, 5, 5)
    b.load_teacher_state(state)
    assert all(torch.equal(b.state_dict()[k], v) for k, v in state.items())
    bad = {("backbone." + k[len("encoder."):] if k.startswith("encoder.") else k): v for k, v in state.items()}
    with pytest.raises(CheckpointError, match="missing keys \\[encoder.*unexpected keys \\[backbone"):
        b.load_teacher_state(bad)
    wrong = dict(state)
    wrong["head_lab.prototypes.weight"] = torch.zeros(7, wrong["head_lab.prototypes.weight"].shape[1])
    with pytest.raises(CheckpointError, match="size mismatch"):
        b.load_teacher_state(wrong)
