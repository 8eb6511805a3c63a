"""Class-relation distillation L_rKD with its adaptive weight (Cr-KD, ICCV 2023)."""
import torch
import torch.nn.functional as F
from torch import Tensor


def relation_kd_terms(teacher_logits: Tensor, student_logits: Tensor, t: float = 4.0,
                      tau: float = 0.1, eta_at: str = "tau", form: str = "kl",
                      detach_weight: bool = False, mask: Tensor | None = None,
                      weight_norm: str = "sample") -> tuple[Tensor, Tensor]:
    """The rKD loss and its per-sample weight g.

    teacher_logits: [..., N, C_l] frozen teacher's known-head cosine logits.
    student_logits: [..., N, C_l + C_u] student's joint cosine logits.
    Leading dims (views, heads) are independent batches; the loss is averaged over them.
    eta_at: "tau" (paper) or "tau_t" (public code) temperature for the known mass eta.
    form: "kl" (paper) or "ce" (public code: -sum p_T log p_S, KL plus teacher entropy).
    weight_norm: "sample" (paper: g has mean 1 over the N samples of each view and head)
    or "global" (public code: g = eta / mean(eta) over all views x heads x samples).
    mask: optional [N] bool, the samples that take part (the unlabeled ones), as if
    the others were not in the batch; avoids boolean indexing and its GPU sync.
    Returns (scalar loss, weight g of shape [..., N], zero outside the mask).
    """
    n_known = teacher_logits.shape[-1]
    temp = tau * t
    teacher_logits, student_logits = _wide(teacher_logits), _wide(student_logits)
    p_t = F.softmax(teacher_logits / temp, dim=-1)
    log_p_s = F.log_softmax(student_logits[..., :n_known] / temp, dim=-1)
    if form == "kl":
        per_sample = (p_t * (torch.log(p_t.clamp_min(1e-30)) - log_p_s)).sum(-1)
    elif form == "ce":
        per_sample = -(p_t * log_p_s).sum(-1)
    else:
        raise ValueError(f"form must be 'kl' or 'ce', got {form!r}")
    eta_temp = {"tau": tau, "tau_t": temp}[eta_at]
    eta = F.softmax(student_logits / eta_temp, dim=-1)[..., :n_known].sum(-1)
    m = torch.ones_like(eta) if mask is None else mask.to(eta.dtype).expand_as(eta)
    if weight_norm == "sample":
        n = m.sum(-1, keepdim=True).clamp_min(1)
        g = n * eta * m / (eta * m).sum(-1, keepdim=True).clamp_min(1e-30)
    elif weight_norm == "global":
        n = m.sum().clamp_min(1)
        g = n * eta * m / (eta * m).sum().clamp_min(1e-30)
    else:
        raise ValueError(f"weight_norm must be 'sample' or 'global', got {weight_norm!r}")
    if detach_weight:
        g = g.detach()
    # Mean over the included samples of each leading batch, then over the batches; with
    # the same mask everywhere this is also the mean over all included entries (code form).
    loss = ((g * per_sample).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp_min(1)).mean()
    return loss * t * t, g


def _wide(x: Tensor) -> Tensor:
    """float32 at least (half precision would round the softmaxes); float64 stays float64."""
    return x if x.dtype == torch.float64 else x.float()


def relation_kd(teacher_logits: Tensor, student_logits: Tensor, t: float = 4.0,
                tau: float = 0.1, **options) -> Tensor:
    """Scalar rKD loss: mean_i g_i * t^2 * KL(p_T_i || p_S_i); see relation_kd_terms."""
    return relation_kd_terms(teacher_logits, student_logits, t, tau, **options)[0]
