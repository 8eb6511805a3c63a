"""Throughput benchmark: `python -m crkd.bench [--benchmark B] [--set k=v ...]`.

(a) discovery images/s against the model-only bound: forward + backward of the
    same crops plus the teacher forward, with no data work and no losses;
(b) batched augmentation against a per-image PIL torchvision pipeline with the
    same recipe (UNO's transforms: 2 large + 2 small crops), at the same batch size;
    for folder images, whose views the loader cuts, the colour part alone.
Figures are medians over repeats after a warm-up; ratios come from one process.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from .config import load_config
from .data import load_data
from .stages import Discover, Pretrain


def _timer(device):
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
    return sync


def _median_time(fn, sync, repeats: int, warmup: int = 3) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), (statistics.pstdev(times) if len(times) > 1 else 0.0)


def bench_step(stage: Discover, batch: int, repeats: int) -> dict:
    sync = _timer(stage.device)
    x, idx = next(stage.images.batches(batch, shuffle=True, drop_last=True, crops=stage.aug.crop_spec()))
    full, full_sd = _median_time(lambda: stage.step(x, idx, 0), sync, repeats)
    views = stage.aug.large(x) + stage.aug.small(x)
    nl = stage.cfg.aug.num_large
    large, small = stage._views(views[:nl]), stage._views(views[nl:]) if views[nl:] else None
    from .stages.common import autocast

    def model_only():
        with autocast(stage.device, stage.cfg.amp):
            outs = [stage.model(large)] + ([stage.model(small)] if small is not None else [])
            if stage.teacher is not None:
                with torch.no_grad():
                    stage.teacher(large)
        loss = sum(o["lab"].float().sum() + o["unlab"].float().sum() for o in outs)
        stage.opt.zero_grad(set_to_none=True)
        loss.backward()
        stage.opt.step()
    bound, bound_sd = _median_time(model_only, sync, repeats)
    n = idx.shape[0]
    return {"batch": n, "step_s": full, "step_sd": full_sd, "bound_s": bound, "bound_sd": bound_sd,
            "images_per_s": n / full, "bound_images_per_s": n / bound, "overhead": full / bound}


class _Solarize:
    """UNO's Solarize(p): with chance p, PIL's solarize at a threshold uniform in [0, 256)."""

    def __init__(self, p: float):
        self.p = p

    def __call__(self, img):
        from PIL import ImageOps
        if self.p <= 0 or torch.bernoulli(torch.tensor(self.p)) == 0:
            return img
        return ImageOps.solarize(img, (torch.rand(1) * 256).item())


class _Blur:
    """SimCLR's GaussianBlur as UNO has it: PIL's blur at a radius (sigma) uniform in sigma."""

    def __init__(self, sigma):
        self.sigma = sigma

    def __call__(self, img):
        import random
        from PIL import ImageFilter
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))


def pil_recipe(c, large: bool, crop: bool = True):
    """torchvision's per-image PIL pipeline of the large or small recipe of an AugConfig
    (UNO's transforms); without the crop and flip if not `crop` (views cut already)."""
    from torchvision import transforms as T
    if large:
        jitter_p, grey_p, blur_p, sol_p, eq_p = c.jitter_p, c.grayscale_p, c.blur_p, c.solarize_p, c.equalize_p
        geometric = T.RandomChoice([T.RandomCrop(c.size, padding=c.pad), T.RandomResizedCrop(c.size, tuple(c.rrc_scale))],
                                   p=[1 - c.rrc_prob, c.rrc_prob])
    else:
        jitter_p, grey_p, blur_p = c.small_jitter_p, c.small_grayscale_p, c.small_blur_p
        sol_p, eq_p = c.small_solarize_p, c.small_equalize_p
        geometric = T.RandomResizedCrop(c.small_size, tuple(c.small_scale))
    steps = ([geometric] + ([T.RandomHorizontalFlip()] if c.flip else [])) if crop else []
    steps.append(T.RandomApply([T.ColorJitter(*c.jitter)], p=jitter_p))
    if grey_p > 0:
        steps.append(T.RandomGrayscale(p=grey_p))
    if blur_p > 0:
        steps.append(T.RandomApply([_Blur(c.blur_sigma)], p=blur_p))
    steps += [_Solarize(sol_p), T.RandomEqualize(p=eq_p), T.ToTensor(), T.Normalize(c.mean, c.std)]
    return T.Compose(steps)


def bench_aug(stage, batch: int, repeats: int) -> dict:
    """Batched augmentation vs torchvision's per-image PIL transforms, same recipe. Views that
    the loader cuts (folder images) are compared on their colour part alone."""
    from PIL import Image
    from .data.images import Crops
    c = stage.cfg.aug
    sync = _timer(stage.device)
    x, idx = next(stage.images.batches(batch, shuffle=True, crops=stage.aug.crop_spec()))
    ours, ours_sd = _median_time(lambda: (stage.aug.large(x), stage.aug.small(x)), sync, repeats)
    cut = isinstance(x, Crops)
    large, small = pil_recipe(c, True, not cut), pil_recipe(c, False, not cut)

    def pil_images(t):
        arrays = t.permute(0, 2, 3, 1).cpu().numpy()
        mode = "L" if arrays.shape[-1] == 1 else "RGB"
        return [Image.fromarray(a.squeeze(-1) if mode == "L" else a, mode) for a in arrays]
    if cut:
        views = [(large, pil_images(v)) for v in x.large] + [(small, pil_images(v)) for v in x.small]
    else:
        images = pil_images(x)
        views = [(large, images)] * c.num_large + [(small, images)] * c.num_small

    def pil():
        return [torch.stack([t(im) for im in images]).to(stage.device) for t, images in views]
    theirs, theirs_sd = _median_time(pil, sync, max(2, repeats // 4), warmup=1)
    return {"batch": idx.shape[0], "batched_s": ours, "batched_sd": ours_sd, "pil_s": theirs,
            "pil_sd": theirs_sd, "speedup": theirs / ours}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m crkd.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--benchmark", default="digits")
    p.add_argument("--data-root")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--batch", type=int, help="batch size (default: the config's discovery batch)")
    p.add_argument("--aug-batch", type=int, default=512)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = p.parse_args(argv)
    overrides = args.overrides + [f"device={args.device}", "pretrain.epochs=1"]
    if args.data_root:
        overrides.append(f"data.root={json.dumps(args.data_root)}")
    cfg = load_config(None, args.benchmark, overrides)
    data = load_data(cfg.data)
    pre = Pretrain(cfg, data)
    stage = Discover(cfg, pre.teacher_checkpoint(), data)
    dev = stage.device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    print(f"device {dev} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"benchmark {args.benchmark}, model {cfg.model.arch}, amp {cfg.amp and dev.type == 'cuda'}")
    step = bench_step(stage, args.batch or cfg.discover.batch_size, args.repeats)
    print(f"(a) discovery step: {step['images_per_s']:.0f} images/s (batch {step['batch']}, "
          f"{step['step_s'] * 1e3:.1f} +- {step['step_sd'] * 1e3:.1f} ms); model-only bound "
          f"{step['bound_images_per_s']:.0f} images/s; overhead {step['overhead']:.3f}x (target <= 1.15)")
    aug = bench_aug(stage, args.aug_batch, args.repeats)
    print(f"(b) augmentation, batch {aug['batch']}, 2 large + 2 small crops: batched "
          f"{aug['batched_s'] * 1e3:.1f} ms, per-image PIL {aug['pil_s'] * 1e3:.1f} ms; "
          f"speedup {aug['speedup']:.1f}x (target >= 5)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(dev), "name": name, "step": step, "aug": aug,
                       "config": cfg.to_dict()}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
