"""Batched augmentation against torchvision's and UNO's per-image transforms."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image, ImageFilter, ImageOps
from scipy.stats import ks_2samp
from torchvision.transforms.v2 import functional as TF

from crkd import Discover, Pretrain, apply_overrides, load_data, preset
from crkd.data.augment import (Augment, color_jitter, crop_boxes, crop_flip, gaussian_blur, gaussian_kernels, grayscale,
                               jitter_affine, random_blur, random_grayscale, random_solarize, resolve_aug,
                               rrc_params, solarize)
from crkd.data.images import Crops, cut_views, rrc_box

# --- device crops ------------------------------------------------------------------


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


def _clamped_params(n, height, width, scale, g):
    """The old sampler: one try, width and height clamped to the image (for the test's power)."""
    area = height * width * (torch.rand(n, generator=g) * (scale[1] - scale[0]) + scale[0])
    r = torch.exp(torch.rand(n, generator=g) * (math.log(4 / 3) - math.log(3 / 4)) + math.log(3 / 4))
    w, h = torch.sqrt(area * r).round().clamp(max=width), torch.sqrt(area / r).round().clamp(max=height)
    top = (torch.rand(n, generator=g) * (height - h + 1)).floor()
    left = (torch.rand(n, generator=g) * (width - w + 1)).floor()
    return top, left, h, w


@pytest.mark.parametrize("height,width,scale", [(32, 32, (0.5, 1.0)), (200, 300, (0.08, 0.5)),
                                                (100, 400, (0.08, 1.0))])
def test_rrc_params_match_torchvision_in_distribution(height, width, scale):
    # 10k boxes from torchvision's own get_params against 10k of ours, two-sample KS on
    # w, h, area, top and left. Fixed seeds make the test deterministic; the bound is the
    # KS critical value at alpha = 1e-3 (1.95 * sqrt(2 / n) = 0.028), conservative here as
    # the values are integers. 100 x 400 misses often: the centre-crop fallback is in play.
    n = 10_000
    torch.manual_seed(0)
    img = torch.empty(3, height, width)
    tv = torch.tensor([T.RandomResizedCrop.get_params(img, list(scale), [3 / 4, 4 / 3]) for _ in range(n)])
    tv_top, tv_left, tv_h, tv_w = tv.T.float()
    torch.manual_seed(1)
    top, left, h, w = (v.float() for v in rrc_params(n, height, width, scale))
    assert (w > 0).all() and (w <= width).all() and (h > 0).all() and (h <= height).all()
    assert (top >= 0).all() and (top + h <= height).all() and (left >= 0).all() and (left + w <= width).all()
    bound = 1.95 * math.sqrt(2 / n)
    for a, b in ((w, tv_w), (h, tv_h), (w * h, tv_w * tv_h), (top, tv_top), (left, tv_left)):
        assert ks_2samp(a.numpy(), b.numpy()).statistic < bound
    # the test has the power to see the old sampler, which clamped w and h to the image
    old = _clamped_params(n, height, width, scale, torch.Generator().manual_seed(2))
    if height == width:  # where clamping bit (a quarter of the draws at scale 0.5-1)
        assert max(ks_2samp(o.numpy(), t.numpy()).statistic for o, t in zip(old, (tv_top, tv_left, tv_h, tv_w))) > 2 * bound


def test_rrc_box_is_torchvisions_draw_for_draw():
    img = torch.empty(3, 100, 400)
    for seed in range(200):
        torch.manual_seed(seed)
        expect = T.RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3])
        assert rrc_box(100, 400, (0.08, 1.0), torch.Generator().manual_seed(seed)) == tuple(expect)


def test_crop_boxes_equal_torchvisions_resized_crop():
    torch.manual_seed(3)
    x = torch.rand(48, 3, 40, 50)
    top, left, h, w = rrc_params(48, 40, 50, (0.08, 1.0))
    out = crop_boxes(x, top, left, h, w, 24)  # both shrinking and enlarging boxes
    for i in range(48):
        ref = TF.resized_crop(x[i], int(top[i]), int(left[i]), int(h[i]), int(w[i]), [24, 24], antialias=False)
        assert torch.allclose(out[i], ref, atol=1e-5)
    # integer-aligned, identity scale: exactly the pixels of the box; flipped: mirrored
    side = torch.full((48,), 24)
    flip = torch.arange(48) % 2 == 0
    out = crop_boxes(x, top.clamp(max=16), left.clamp(max=26), side, side, 24, flip)
    for i in range(48):
        t, l = int(top[i].clamp(max=16)), int(left[i].clamp(max=26))
        ref = TF.crop(x[i], t, l, 24, 24)
        assert torch.allclose(out[i], ref.flip(-1) if flip[i] else ref, atol=1e-5)  # float rounding of the grid


# --- colour ------------------------------------------------------------------------


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


def _ramp(n):
    """n images holding every uint8 level once: [n, 1, 16, 16] in [0, 1]."""
    return (torch.arange(256).float() / 255).view(1, 1, 16, 16).repeat(n, 1, 1, 1)


def test_solarize_is_pils_at_any_threshold():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    x = torch.from_numpy(img).permute(2, 0, 1).float().div(255).unsqueeze(0)
    for t in (0.0, 0.5, 100.0, 100.5, 128.0, 200.3, 255.0, 255.9):
        ref = np.asarray(ImageOps.solarize(Image.fromarray(img), t))
        out = solarize(x, torch.tensor([t]))[0].permute(1, 2, 0).mul(255).round().byte().numpy()
        assert (out == ref).all(), t


def test_solarize_threshold_uniform_per_sample():
    # UNO: threshold torch.rand(1) * 256 per image. On a ramp of all 256 levels, the first
    # inverted level is ceil(threshold) (256: none), uniform over 1..256 when p = 1.
    torch.manual_seed(5)
    n = 8000
    x = _ramp(n)
    out = random_solarize(x, 1.0)
    inverted = (out - x).abs().view(n, -1) > 1e-6
    first = torch.where(inverted.any(1), inverted.byte().argmax(1), 256).float()
    assert inverted.any(1).float().mean() > 0.99
    assert abs(first.mean().item() - 128.5) < 4 * 74 / math.sqrt(n)  # sd of U{1..256} is 74
    counts = torch.histc(first, bins=4, min=0.5, max=256.5)  # four equal bins of 64 levels
    assert ((counts - n / 4).abs() < 4 * math.sqrt(n * 0.25 * 0.75)).all()
    # inverted levels are exactly those at or above the threshold: a suffix of the ramp
    assert torch.equal(inverted, torch.arange(256) >= first.unsqueeze(1))
    # with p: untouched images in proportion 1 - p (plus thresholds above 255, 1 in 256)
    touched = ((random_solarize(x[:4000], 0.3) - x[:4000]).abs().amax((1, 2, 3)) > 0).float().mean()
    assert abs(touched.item() - 0.3 * 255 / 256) < 0.03


def test_grayscale_uses_torchvisions_weights_per_sample():
    torch.manual_seed(6)
    x = torch.rand(8, 3, 6, 6)
    on = torch.tensor([True, False] * 4)
    out = grayscale(x, on)
    for i in range(8):
        assert torch.allclose(out[i], TF.rgb_to_grayscale(x[i], 3) if on[i] else x[i], atol=1e-6)
    frac = (random_grayscale(torch.rand(4000, 3, 2, 2), 0.2).std(1) < 1e-6).all(-1).all(-1).float().mean()
    assert abs(frac.item() - 0.2) < 0.03
    g = torch.rand(5, 1, 4, 4)
    assert random_grayscale(g, 1.0) is g


def test_gaussian_blur_per_sample_sigma():
    torch.manual_seed(7)
    x = torch.rand(4, 3, 30, 34)
    sigma = torch.tensor([0.0, 0.5, 1.0, 2.0])
    out = gaussian_blur(x, sigma, 6)
    assert torch.equal(out[0], x[0])  # sigma 0: the identity
    assert torch.allclose(gaussian_blur(torch.full((2, 3, 9, 9), 0.3), sigma[2:], 6), torch.tensor(0.3), atol=1e-6)
    for i in (1, 2, 3):
        # torchvision's separable blur with the same taps; its border reflects where ours
        # (PIL's) replicates, so compare the interior
        ref = TF.gaussian_blur(x[i], [13, 13], [sigma[i].item()] * 2)
        assert torch.allclose(out[i, :, 6:-6, 6:-6], ref[:, 6:-6, 6:-6], atol=1e-5)


def test_gaussian_blur_close_to_pils():
    # UNO blurs with PIL (three box blurs of the right variance, rounded to uint8): within a
    # level on average, well under what the blur itself changes
    rng = np.random.default_rng(8)
    img = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((64, 48), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().div(255).unsqueeze(0)
    for s in (0.5, 1.0, 2.0):
        ours = gaussian_blur(x, torch.tensor([s]), 6)[0] * 255
        pil = torch.from_numpy(np.asarray(img.filter(ImageFilter.GaussianBlur(radius=s))).copy()).permute(2, 0, 1).float()
        assert (ours - pil).abs().mean() < 1.0
        assert (ours - pil).abs().mean() < 0.4 * (x[0] * 255 - pil).abs().mean()


def test_random_blur_chance_and_sigma_range():
    # Blur an impulse: the centre of the result is the kernel's centre tap squared, which
    # gives each image's sigma back. Below sigma ~0.3 a blur changes nothing in float32.
    torch.manual_seed(9)
    n = 4000
    x = torch.zeros(n, 1, 25, 25)
    x[:, :, 12, 12] = 1
    centre = random_blur(x, 0.5, (0.1, 2.0))[:, 0, 12, 12]
    grid = torch.linspace(0.05, 2.5, 5000)
    taps = gaussian_kernels(grid, 6)[:, 6] ** 2  # decreasing in sigma
    seen = centre < 0.999
    sigma = grid[(taps.unsqueeze(0) - centre[seen].unsqueeze(1)).abs().argmin(1)]
    assert sigma.min() >= 0.1 and sigma.max() <= 2.0 + 1e-3 and sigma.max() > 1.95
    sd = lambda q: 4 * math.sqrt(q * (1 - q) / n)
    for lo, hi in ((1.0, 2.0), (0.5, 1.0)):  # chance 0.5 times the share of U(0.1, 2)
        q = 0.5 * (hi - lo) / 1.9
        assert abs(((sigma > lo) & (sigma <= hi)).sum().item() / n - q) < sd(q)
    assert random_blur(x, 0.0, (0.1, 2.0)) is x


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


def test_imagenet_recipe_on_the_device():
    cfg = preset("imagenet-a").aug
    cfg.size, cfg.small_size = 40, 24  # the recipe at a size the CPU runs quickly
    aug = Augment(cfg, 3, "cpu")
    torch.manual_seed(10)
    x = torch.randint(0, 256, (128, 3, 48, 48), dtype=torch.uint8)
    large, small = aug.large(x), aug.small(x)
    assert [v.shape for v in large] == [torch.Size([128, 3, 40, 40])] * 2
    assert [v.shape for v in small] == [torch.Size([128, 3, 24, 24])] * 2
    raw = torch.cat(small) * aug.std + aug.mean
    grey = (raw.std(1) < 1e-5).flatten(1).all(1).float().mean()
    assert 0.1 < grey < 0.3  # RandomGrayscale(0.2)


# --- folder images: views cut by the loader ----------------------------------------------

SIZES = [(300, 200), (180, 400)]  # (width, height) of the training images, alternating


def _tree(root, n=3):
    """ROOT/{train,test}/<class>/ of images whose blue channel is 255 only in a band along
    the long sides' ends (x < 30 or x >= W - 30, or the same in y), far outside the centre
    square that evaluation (and the old training path) kept."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("cat", "dog", "fox", "owl"):
            os.makedirs(root / split / c)
            for i in range(n):
                w, h = SIZES[i % 2]
                a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                a[..., 2] = 0
                if w > h:
                    a[:, :30, 2] = a[:, -30:, 2] = 255
                else:
                    a[:40, :, 2] = a[-40:, :, 2] = 255
                Image.fromarray(a).save(root / split / c / f"{i}.png")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    _tree(root)
    data = preset("folder").data
    data.root, data.known, data.load_size, data.workers = str(root), ["owl", "cat"], 256, 0
    d = load_data(data)
    cfg = preset("imagenet-a").aug
    resolve_aug(cfg, d)
    return d, cfg


def _epoch(images, spec, seed, batch=4):
    torch.manual_seed(seed)
    return list(images.batches(batch, shuffle=True, drop_last=True, crops=spec))


def test_folder_views_from_the_whole_image(folder):
    d, cfg = folder
    aug = Augment(cfg, 3, "cpu")
    batches = _epoch(d.train, aug.crop_spec(), 0)
    assert len(batches) == 3
    for x, idx in batches:
        assert isinstance(x, Crops) and idx.shape == (4,)
        assert [v.shape for v in x.large] == [torch.Size([4, 3, 224, 224])] * 2
        assert [v.shape for v in x.small] == [torch.Size([4, 3, 96, 96])] * 2
        assert all(v.dtype == torch.uint8 for v in x.large + x.small)
        large, small = aug.large(x), aug.small(x)
        assert [v.shape for v in large] == [torch.Size([4, 3, 224, 224])] * 2
        assert [v.shape for v in small] == [torch.Size([4, 3, 96, 96])] * 2
    # content outside the centre square: the marker band, which evaluation batches never show
    outside = torch.stack([(v[:, 2] > 128).flatten(1).any(1) for x, _ in batches for v in x.large + x.small])
    assert outside.float().mean() > 0.3
    squares, _ = next(d.train.batches(12))
    assert squares.shape == (12, 3, 256, 256) and squares[:, 2].max() < 64
    assert aug.plain(squares).shape == (12, 3, 224, 224)
    assert len(_epoch(d.train, aug.crop_spec(small=False), 0)[0][0].small) == 0


def test_folder_views_are_torchvisions_transforms(folder):
    # With the seed of an image, the views are those of UNO's torchvision transforms (the
    # geometric part: RandomResizedCrop, RandomHorizontalFlip) under torch.manual_seed(seed)
    d, cfg = folder
    spec = Augment(cfg, 3, "cpu").crop_spec()
    large = T.Compose([T.RandomResizedCrop(224, (0.5, 1.0)), T.RandomHorizontalFlip()])
    small = T.Compose([T.RandomResizedCrop(96, (0.08, 0.5)), T.RandomHorizontalFlip()])
    for i, seed in ((0, 11), (1, 12), (2, 13)):
        with Image.open(d.train.paths[i]) as im:
            im = im.convert("RGB")
            ours = cut_views(im, spec, 256, torch.Generator().manual_seed(seed))
            torch.manual_seed(seed)
            theirs = [large(im), large(im), small(im), small(im)]
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(ours, theirs))


def test_folder_views_deterministic_whatever_the_workers(folder):
    d, cfg = folder
    spec = Augment(cfg, 3, "cpu").crop_spec()
    a, b = _epoch(d.train, spec, 0), _epoch(d.train, spec, 0)
    d.train.workers = 2
    try:
        c = _epoch(d.train, spec, 0)
    finally:
        d.train.workers = 0
    other = _epoch(d.train, spec, 1)
    same = lambda p, q: all(torch.equal(i, j) and all(torch.equal(u, v) for u, v in zip(x.large + x.small, y.large + y.small))
                            for (x, i), (y, j) in zip(p, q))
    assert same(a, b) and same(a, c) and not same(a, other)
    # the second epoch continues from the RNG: its crops differ from the first's
    torch.manual_seed(0)
    first = list(d.train.batches_from([torch.arange(4)], spec))
    second = list(d.train.batches_from([torch.arange(4)], spec))
    assert not torch.equal(first[0][0].large[0], second[0][0].large[0])


def test_folder_stages_train_and_resume(folder, tmp_path):
    d, _ = folder
    cfg = preset("imagenet-a")
    cfg.data = preset("folder").data
    cfg = apply_overrides(cfg, ["aug.size=32", "aug.small_size=16", "model.arch=small", "model.widths=[8,8,8]",
                                "model.hidden_dim=16", "model.proj_dim=8", "pretrain.epochs=1",
                                "pretrain.batch_size=4", "discover.epochs=2", "discover.batch_size=4",
                                "device=cpu"])
    pre = Pretrain(cfg, d)
    assert math.isfinite(pre.run()["pretrain/loss"])
    teacher = pre.teacher_checkpoint()
    strip = lambda m: {k: v for k, v in m.items() if not k.startswith("time/")}
    full = [strip(m) for m in Discover(cfg, teacher, d)]
    first = Discover(cfg, teacher, d)
    strip(next(iter(first)))
    first.save(str(tmp_path / "d.pt"))
    torch.manual_seed(123)
    rest = [strip(m) for m in Discover.from_checkpoint(str(tmp_path / "d.pt"), d)]
    assert math.isfinite(full[-1]["loss/total"]) and rest == full[1:]
