"""Local plasticity rules: pure functions from one layer's activity to its weight change.

Shapes: ``B`` lifetimes (population x episodes), ``m`` rows of the step's mini-batch, a layer of
``out x in`` weights. Every rule sums over the m rows and returns ``dW`` of shape ``[B, out, in]``.
Coefficients arrive with a granularity shape that broadcasts against ``[B, out, in]``:
``[B, 1, 1]`` (per layer), ``[B, out, 1]`` (per post-neuron) or ``[B, out, in]`` (per synapse).

With post activity x~ = post, pre activity x = pre (docs/model.md):
    hebb:  dW = eta * sum_m x~ x^T
    oja:   dW = eta * (sum_m x~ x^T - diag(sum_m x~^2) W)          (per-neuron decay)
    abcd:  dW = eta * sum_m (A x~ x^T + B x~ 1^T + C 1 x^T + D)      (Najarro & Risi 2020)
    terms: dW = sum_r theta_r * F_r, F_r from :data:`TERMS`         (Shervani-Tabar & Rosenbaum 2023)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor


@dataclass(frozen=True)
class LayerActivity:
    """What one plastic layer sees at one lifetime step.

    pre:      [B, m, in]   presynaptic activity x_{l-1} (the unmodified feed-forward input)
    post:     [B, m, out]  teaching post activity x~_l = beta f_l + (1 - beta) x_l
    post_ff:  [B, m, out]  feed-forward post activity x_l = relu(a_l) (y_hat for the output layer)
    feedback: [B, m, out]  raw feedback B_l s (before its bias and activation); None unless the rule
                           reads it (the 'terms' rule with 'pseudo_grad')
    weight:   [B, out, in] the layer's weights before this step's update
    is_output: whether this is the (linear) output layer
    """

    pre: Tensor
    post: Tensor
    post_ff: Tensor
    feedback: Optional[Tensor]
    weight: Tensor
    is_output: bool


def hebbian(post: Tensor, pre: Tensor) -> Tensor:
    """``sum_m post pre^T``: ``[B, m, out] x [B, m, in] -> [B, out, in]``, column-major like the weights
    (computed as ``pre^T post`` and returned transposed), so ``W + dW`` keeps the lifetime's layout."""
    return torch.bmm(pre.transpose(1, 2), post).transpose(1, 2)


def _row_sq(post: Tensor) -> Tensor:
    """``sum_m post^2`` as a column: ``[B, m, out] -> [B, out, 1]``."""
    return torch.linalg.vecdot(post, post, dim=1).unsqueeze(-1)


# Named terms of the 'terms' rule: F_r(activity) -> [B, out, in]
TERMS: dict[str, Callable[[LayerActivity], Tensor]] = {
    # Hebbian co-activity of teaching post and pre
    "hebb": lambda a: hebbian(a.post, a.pre),
    # error-Hebbian: (teaching - feed-forward post) times pre (a contrastive / delta-rule term)
    "error_hebb": lambda a: hebbian(a.post - a.post_ff, a.pre),
    # Oja's per-neuron decay: -diag(sum x~^2) W
    "oja_decay": lambda a: -_row_sq(a.post) * a.weight,
    # Oja's subspace decay: -(sum x~ x~^T) W
    "oja_subspace": lambda a: -torch.bmm(torch.bmm(a.post.transpose(1, 2), a.post), a.weight),
    # pseudo-gradient: feedback times the activation's derivative, times pre (DFA-like)
    "pseudo_grad": lambda a: hebbian(a.feedback if a.is_output else a.feedback * (a.post_ff > 0), a.pre),
    # plain weight decay
    "decay": lambda a: -a.weight,
}


def hebb(c: dict[str, Tensor], a: LayerActivity) -> Tensor:
    return c["eta"] * hebbian(a.post, a.pre)


def oja(c: dict[str, Tensor], a: LayerActivity) -> Tensor:
    return c["eta"] * (hebbian(a.post, a.pre) - _row_sq(a.post) * a.weight)


def abcd(c: dict[str, Tensor], a: LayerActivity) -> Tensor:
    m = a.pre.shape[1]
    post_sum = a.post.sum(dim=1).unsqueeze(-1)   # [B, out, 1]
    pre_sum = a.pre.sum(dim=1).unsqueeze(1)      # [B, 1, in]
    return c["eta"] * (c["A"] * hebbian(a.post, a.pre) + c["B"] * post_sum + c["C"] * pre_sum + c["D"] * m)


def make_terms_rule(terms: tuple[str, ...]) -> Callable[[dict[str, Tensor], LayerActivity], Tensor]:
    """The 'terms' rule over ``terms``; its coefficient ``theta`` is ``[B, R, *granularity]``."""
    fns = [TERMS[t] for t in terms]

    def rule(c: dict[str, Tensor], a: LayerActivity) -> Tensor:
        theta = c["theta"]
        dw = theta[:, 0] * fns[0](a)
        for r in range(1, len(fns)):
            dw = dw + theta[:, r] * fns[r](a)
        return dw

    return rule


def apply_update_(rule: str, c: dict[str, Tensor], a: LayerActivity, update) -> Tensor:
    """``W += dW`` in place on ``a.weight``, fused where the rule allows; returns ``a.weight``.

    For hebb / oja with per-layer or per-neuron eta, eta folds into the post activity, so the update
    is two passes over W (``W *= 1 - eta * sum x~^2`` for oja, then ``W += (eta x~)^T x`` in one
    ``baddbmm_``) instead of materialising dW. For everything else ``W += update(c, a)``.
    Only for the no-grad path (evolution); the result equals ``a.weight + update(c, a)``.
    """
    w = a.weight
    eta = c.get("eta")
    if rule in ("hebb", "oja") and eta is not None and eta.shape[-1] == 1:
        if rule == "oja":
            w.mul_(1 - eta * _row_sq(a.post))
        scaled_post = a.post * eta.transpose(1, 2)                           # [B, m, out]
        if w.shape[1] == 1:   # one output: a batched matrix-vector product is ~2.5x faster as a vecdot
            return w.add_(torch.linalg.vecdot(a.pre, scaled_post, dim=1).unsqueeze(1))
        if w.transpose(1, 2).is_contiguous():                                # column-major: W^T += X^T P
            w.transpose(1, 2).baddbmm_(a.pre.transpose(1, 2), scaled_post)
            return w
        return w.baddbmm_(scaled_post.transpose(1, 2), a.pre)
    return w.add_(update(c, a))


RULES = {"hebb": hebb, "oja": oja, "abcd": abcd}

COEFFICIENTS = {"hebb": ("eta",), "oja": ("eta",), "abcd": ("eta", "A", "B", "C", "D"), "terms": ("theta",)}


def coefficient_names(rule: str) -> tuple[str, ...]:
    """Names of the per-layer coefficients of ``rule`` (segments ``layer{l}.{name}``)."""
    return COEFFICIENTS[rule]


def get_rule(rule: str, terms: tuple[str, ...] = ()) -> Callable[[dict[str, Tensor], LayerActivity], Tensor]:
    """The update function of ``rule``: ``(coefficients, activity) -> dW [B, out, in]``."""
    if rule == "terms":
        return make_terms_rule(terms)
    return RULES[rule]
