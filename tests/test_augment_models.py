"""Model pieces against direct computations (the augmentation's tests: test_augment.py)."""
import pytest
import torch
import torch.nn.functional as F

from crkd import CheckpointError, preset
from crkd.models import MultiHead, NCDModel


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
