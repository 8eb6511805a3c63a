"""Models: encoder + cosine known head + multi-head novel heads."""
from __future__ import annotations

from torch import Tensor, nn

from ..errors import CheckpointError
from .encoders import SmallResNet, resnet18_cifar, resnet18_imagenet
from .heads import CosineHead, MultiHead

ARCHS = {
    "resnet18": lambda cfg, c: resnet18_cifar(c),
    "resnet18_imagenet": lambda cfg, c: resnet18_imagenet(c),
    "small": lambda cfg, c: SmallResNet(c, tuple(cfg.widths), cfg.stem_stride),
}


class NCDModel(nn.Module):
    """f + h_l, and (for discovery) H novel heads and optional over-clustering heads.

    forward(x) returns feats [B, D], lab [B, C_l] and, if present, unlab [H, B, C_u]
    and over [H, B, C_u * factor]: raw cosine logits in float32, not divided by tau;
    with maps=True also the encoder's last conv map [B, C, h, w].
    `overcluster`: the factor (0 off); the caller resolves cfg.overcluster = -1 (auto)."""

    def __init__(self, cfg, in_channels: int, num_known: int, num_novel: int = 0, overcluster: int = 0):
        super().__init__()
        self.encoder = ARCHS[cfg.arch](cfg, in_channels)
        dim = self.encoder.out_dim
        self.head_lab = CosineHead(dim, num_known)
        self.head_unlab = self.head_over = None
        if num_novel:
            self.head_unlab = MultiHead(dim, num_novel, cfg.num_heads, cfg.hidden_dim, cfg.proj_dim)
            if overcluster:
                self.head_over = MultiHead(dim, num_novel * overcluster, cfg.num_heads,
                                           cfg.hidden_dim, cfg.proj_dim)

    def normalize_prototypes(self) -> None:
        for head in (self.head_lab, self.head_unlab, self.head_over):
            if head is not None:
                head.normalize_prototypes()

    def forward(self, x: Tensor, maps: bool = False) -> dict[str, Tensor]:
        out = {}
        if maps:
            out["maps"] = self.encoder.feature_map(x)
            feats = out["maps"].mean((2, 3))
        else:
            feats = self.encoder(x)
        out.update({"feats": feats, "lab": self.head_lab(feats)})
        if self.head_unlab is not None:
            out["unlab"] = self.head_unlab(feats)
        if self.head_over is not None:
            out["over"] = self.head_over(feats)
        return out

    def teacher_state(self) -> dict[str, Tensor]:
        """Encoder + known head: what stage 1 hands to stage 2."""
        return {k: v.detach().cpu().clone() for k, v in self.state_dict().items()
                if k.startswith(("encoder.", "head_lab."))}

    def load_teacher_state(self, state: dict[str, Tensor], source: str = "checkpoint") -> None:
        """Load encoder + known head strictly: any missing or unexpected key is an error."""
        expected = set(self.teacher_state())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise CheckpointError(
                f"{source} does not fit the model: missing keys {_few(missing)}, unexpected keys "
                f"{_few(unexpected)}; was it trained with the same model.arch and data?")
        try:
            self.load_state_dict(state, strict=False)  # strict over the subset, checked above
        except RuntimeError as e:
            raise CheckpointError(f"{source} does not fit the model: {str(e).splitlines()[-1].strip()}") from None


def _few(keys: list[str], n: int = 5) -> str:
    return "[" + ", ".join(keys[:n]) + (f", ... {len(keys) - n} more" if len(keys) > n else "") + "]"


__all__ = ["ARCHS", "NCDModel", "CosineHead", "MultiHead", "SmallResNet"]
