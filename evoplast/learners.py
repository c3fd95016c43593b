"""What happens at one lifetime step: the FLP local rule, or a baseline (online SGD, feedback alignment).

A learner (:class:`Learner`) works on a :class:`NetState` (the weights that change) and ``params``
(the decoded genome expanded to ``B = P*K`` lifetimes, ``{name: [B, *shape]}``):
``init_state(params)``, ``step(params, state, x, y)`` and ``step_and_predict(params, state, x, y)``.
The lifetime loop (:mod:`evoplast.lifetime`) is the same for all of them.

In place or not: under autograd (BPTT, export) every step is out of place and returns new tensors.
:class:`PlasticLearner` with autograd off (evolution) writes the plastic weights of the state it is
given *in place* and returns a state holding the same tensors, so the state passed in must not be read
again (``NetState`` is frozen in which tensors it holds, not in their values; :meth:`PlasticLearner.init_state`
makes the plastic weights private copies, so ``params`` is never written). :class:`GradientLearner` is
always out of place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from .network import ModelSpec, column_major, forward, predict, teaching_signal
from .rules import LayerActivity, apply_update_, coefficient_names, get_rule
from .seeding import Purpose, generator


@dataclass(frozen=True)
class NetState:
    """The changing part of a lifetime: ``weights`` L tensors ``[B, out, in]``, ``biases`` L ``[B, out]``,
    and for a count-normalised rule ``counts``, one ``[B, out]`` per plastic layer (the sum of each
    post-neuron's squared post activity so far; empty otherwise)."""

    weights: tuple[Tensor, ...]
    biases: tuple[Tensor, ...]
    counts: tuple[Tensor, ...] = ()


class Learner(Protocol):
    """What the lifetime loop, the evaluators and export call. ``x [B, m, n_in]``; ``y [B, m, n_out]``
    (regression) or ``[B, m]`` int64 labels; ``y_hat [B, m, n_out]`` is the prediction of the pre-step
    weights."""

    spec: ModelSpec

    def init_state(self, params: dict[str, Tensor]) -> NetState: ...

    def step(self, params: dict[str, Tensor], state: NetState, x: Tensor, y: Tensor) -> NetState: ...

    def step_and_predict(self, params: dict[str, Tensor], state: NetState, x: Tensor,
                         y: Tensor) -> tuple[NetState, Tensor]: ...


def initial_state(spec: ModelSpec, params: dict[str, Tensor]) -> NetState:
    """The network's initial weights and biases from ``params``."""
    L = spec.num_layers
    return NetState(tuple(params[f"layer{l}.weight"] for l in range(1, L + 1)),
                    tuple(params[f"layer{l}.bias"] for l in range(1, L + 1)))


def state_predict(state: NetState, x: Tensor) -> Tensor:
    """Output ``[B, m, n_out]`` of the network in ``state`` for ``x [B, m, n_in]``."""
    return predict(state.weights, state.biases, x)


def _feedback(s: Tensor, feedback: Tensor, bias: Tensor) -> Tensor:
    """``s B^T + c``: ``[B, m, n_out] x [B, out, n_out] + [B, 1, out] -> [B, m, out]``. With one output
    (regression) it is an outer product, done as one broadcast multiply-add: a matmul with inner size 1
    is ~10x slower on CPU."""
    if s.shape[-1] == 1:
        return torch.addcmul(bias, s, feedback.transpose(1, 2))
    return torch.baddbmm(bias, s, feedback.transpose(1, 2))


def count_normalise(coefs: dict[str, Tensor], name: str, count: Tensor, offset: Tensor) -> dict[str, Tensor]:
    """``coefs`` with the coefficient ``name`` (eta, or theta for 'terms') divided per post-neuron by
    ``offset + count``: ``count [B, out]`` the post-neuron's summed squared post activity including this
    step, ``offset [B, 1, 1]``. eta ``[B, a, b]`` becomes ``[B, out, b]``; theta ``[B, R, a, b]``,
    ``[B, R, out, b]``. A neuron that has seen nothing (0 / 0) gets a rate of 0."""
    denominator = (offset.reshape(-1, 1) + count).clamp_min(1e-12)                    # [B, out]
    scale = denominator.reciprocal() * (count + offset.reshape(-1, 1) > 0)
    c = coefs[name]
    factor = scale.unsqueeze(-1) if c.dim() == 3 else scale.unsqueeze(1).unsqueeze(-1)
    return coefs | {name: c * factor}


class PlasticLearner:
    """FLP: forward -> teaching signal -> direct feedback -> local rule on every plastic layer.

    Post activity of plastic layer l: ``x~_l = beta_l f_l + (1 - beta_l) x_l`` with
    ``f_l = g(B_l s + c_l)``; g is relu or identity for hidden layers and the identity for the output
    layer (its post activity is then ``beta (B s + c) + (1 - beta) y_hat``). For classification the
    output layer's post activity is the teaching signal itself (the one-hot target by default).
    All plastic layers update simultaneously from the pre-update weights; biases are not plastic.

    When autograd is off (evolution), the state's weights (private copies, see :meth:`init_state`)
    are updated in place: by the fused C++ kernel (:mod:`evoplast.fused`, one call per step) when
    ``fused`` is set and it covers the model, else by fused PyTorch updates
    (:func:`evoplast.rules.apply_update_`). Under autograd every step is out of place. The paths give the
    same numbers up to float rounding (tested).

    ``spec.batch_reduction == "mean"`` divides the rule's whole update by the step's rows m, in one place
    (:meth:`per_row_coefficients`, before every path), so eta means the same at any batch size.
    """

    def __init__(self, spec: ModelSpec, fused: bool = False):
        self.spec = spec
        self.fused = False
        if fused:
            from . import fused as fused_kernel

            self.fused = fused_kernel.supports(spec) and fused_kernel.available()
            if self.fused:
                self._fused_step = fused_kernel.bind(spec)
                # the per-step conditions left: float32 on the CPU, eta per layer or per neuron (not synapse)
                self._eta_name = f"layer{spec.plastic_layers[0]}.eta" if spec.plastic_layers else None
        self.rule = get_rule(spec.rule, spec.terms)
        self.coef_names = coefficient_names(spec.rule)
        self.needs_raw_feedback = spec.rule == "terms" and "pseudo_grad" in spec.terms
        # the coefficient that multiplies a layer's whole update: eta (hebb, oja, abcd) or theta (terms)
        self._scale_names = tuple(f"layer{l}.{self.coef_names[0]}" for l in spec.plastic_layers)

    def per_row_coefficients(self, params: dict[str, Tensor], m: int) -> dict[str, Tensor]:
        """``params`` as the rule sees them at a step of ``m`` rows: unchanged for ``batch_reduction='sum'``;
        for ``'mean'`` each plastic layer's eta (or theta) divided by m, so its update is the mean over the rows
        instead of the sum (every term of every rule is linear in that coefficient)."""
        if self.spec.batch_reduction != "mean":   # no test of m: an exported step keeps m dynamic
            return params
        return params | {n: params[n] / m for n in self._scale_names}

    def init_state(self, params: dict[str, Tensor]) -> NetState:
        """The initial weights, :func:`~evoplast.network.column_major`; the plastic ones are private copies,
        so a lifetime never writes into ``params``."""
        state = initial_state(self.spec, params)
        plastic = set(self.spec.plastic_layers)
        counts = tuple(state.weights[l - 1].new_zeros(state.weights[l - 1].shape[:2])
                       for l in self.spec.plastic_layers) if self.spec.count_normalised else ()
        return NetState(tuple(column_major(w, copy=l in plastic) for l, w in enumerate(state.weights, start=1)),
                        state.biases, counts)

    def step(self, params: dict[str, Tensor], state: NetState, x: Tensor, y: Tensor,
             inplace: bool | None = None) -> NetState:
        """One online step on the mini-batch ``x [B, m, n_in]``, ``y [B, m, n_out]`` (or ``[B, m]`` labels).

        ``inplace``: update ``state``'s plastic weights in place and return a state holding the same
        tensors (default: when autograd is off); ``state`` must not be read afterwards. Otherwise a new
        state (out of place).
        """
        return self.step_and_predict(params, state, x, y, inplace)[0]

    def step_and_predict(self, params: dict[str, Tensor], state: NetState, x: Tensor, y: Tensor,
                         inplace: bool | None = None) -> tuple[NetState, Tensor]:
        """:meth:`step`, also returning the prediction ``y_hat [B, m, n_out]`` of the pre-update weights."""
        spec = self.spec
        L = spec.num_layers
        if inplace is None:
            inplace = not torch.is_grad_enabled()
        params = self.per_row_coefficients(params, x.shape[1])
        if inplace and self.fused and x.device.type == "cpu" and x.dtype == torch.float32 and \
                (self._eta_name is None or params[self._eta_name].shape[-1] == 1):
            return state, self._fused_step(params, state.weights, state.biases, x, y)
        acts, y_hat = forward(state.weights, state.biases, x)
        s = teaching_signal(spec, y_hat, y)                                    # [B, m, n_out]
        weights = list(state.weights)
        activities = []
        counts: list[Tensor] = []
        for l in spec.plastic_layers:
            is_output = l == L
            w = state.weights[l - 1]
            bias = params[f"layer{l}.feedback_bias"].unsqueeze(1)                # [B, 1, out]
            f = _feedback(s, params[f"layer{l}.feedback"], bias)               # [B, m, out] = s B_l^T + c_l
            fb = f - bias if self.needs_raw_feedback else None
            if not is_output and spec.feedback_activation == "relu":
                f = torch.relu_(f)
            post_ff = y_hat if is_output else acts[l]
            if is_output and spec.kind == "classification":
                post = s
            else:                                  # beta f + (1 - beta) x in one pass
                post = torch.lerp(post_ff, f, params[f"layer{l}.beta"])         # beta [B, 1, 1]
            if spec.gated:                         # third factor: [B, m, out] = sigmoid(s G_l^T + h_l)
                post = post * torch.sigmoid(_feedback(s, params[f"layer{l}.gate"],
                                                      params[f"layer{l}.gate_bias"].unsqueeze(1)))
            activity = LayerActivity(pre=acts[l - 1], post=post, post_ff=post_ff, feedback=fb, weight=w,
                                     is_output=is_output)
            coefs = {c: params[f"layer{l}.{c}"] for c in self.coef_names}
            if spec.count_normalised:
                i = len(counts)
                counts.append(state.counts[i] + (post * post).sum(1))                   # [B, out]
                coefs = count_normalise(coefs, self.coef_names[0], counts[i], params[f"layer{l}.count_offset"])
            if inplace:  # every layer's activity is computed before any weight changes
                activities.append((coefs, activity))
            else:
                weights[l - 1] = w + self.rule(coefs, activity)
        for coefs, activity in activities:
            apply_update_(spec.rule, coefs, activity, self.rule)
        if inplace and counts:
            for old, new in zip(state.counts, counts):
                old.copy_(new)
            counts = list(state.counts)
        return NetState(tuple(weights), state.biases, tuple(counts)), y_hat


class GradientLearner:
    """Online SGD on every weight and bias, with exact backprop or feedback alignment.

    Loss of a step: ``(1/m) sum_rows 1/2 ||y_hat - y||^2`` (regression) or mean cross-entropy.
    ``feedback="backprop"`` sends the error back through ``W_l``; ``"alignment"`` through fixed random
    matrices of the same shapes (Lillicrap et al. 2016), drawn from ``(seed, Purpose.BASELINE)``.
    Gradients are computed by hand, so a step builds no autograd graph. The learning rate is
    ``params["sgd.lr"]`` (``[B]``, one per lifetime, so a grid of rates runs as one batch) when given,
    else ``lr``. ``layers``: the layers SGD updates (default all; OML: the head); ``biases=False`` keeps
    every bias fixed (SGD on exactly the weights a plasticity rule changes).
    """

    def __init__(self, spec: ModelSpec, lr: float, feedback: str = "backprop", seed: int = 0,
                 layers: tuple[int, ...] | None = None, biases: bool = True):
        self.spec, self.lr, self.feedback, self.biases = spec, lr, feedback, biases
        self.layers = set(layers or range(1, spec.num_layers + 1))   # the layers SGD updates (OML: the head)
        self.fa_matrices: tuple[Tensor, ...] = ()
        if feedback == "alignment":
            mats = []
            for l in range(1, spec.num_layers + 1):
                gen = generator(seed, Purpose.BASELINE, l)
                n_in = spec.sizes[l - 1]
                bound = math.sqrt(3.0 / n_in)
                mats.append((torch.rand(spec.sizes[l], n_in, generator=gen) * 2 - 1) * bound)
            self.fa_matrices = tuple(mats)
        elif feedback != "backprop":
            raise ValueError(f"feedback must be 'backprop' or 'alignment', not {feedback!r}")

    def init_state(self, params: dict[str, Tensor]) -> NetState:
        state = initial_state(self.spec, params)
        return NetState(tuple(column_major(w) for w in state.weights), state.biases)

    def step(self, params: dict[str, Tensor], state: NetState, x: Tensor, y: Tensor) -> NetState:
        """One SGD step on ``x [B, m, n_in]``, ``y``; a new state (out of place)."""
        return self.step_and_predict(params, state, x, y)[0]

    def step_and_predict(self, params: dict[str, Tensor], state: NetState, x: Tensor,
                         y: Tensor) -> tuple[NetState, Tensor]:
        """:meth:`step`, also returning the prediction ``y_hat [B, m, n_out]`` of the pre-step weights."""
        acts, y_hat = forward(state.weights, state.biases, x)
        m = x.shape[1]
        if self.spec.kind == "regression":
            delta = (y_hat - y) / m                                             # [B, m, n_out]
        else:
            delta = (torch.softmax(y_hat, -1) - F.one_hot(y, self.spec.n_out).to(y_hat.dtype)) / m
        L = self.spec.num_layers
        lr = params.get("sgd.lr")
        lr_w, lr_b = (self.lr, self.lr) if lr is None else (lr.view(-1, 1, 1), lr.view(-1, 1))
        weights, biases = list(state.weights), list(state.biases)
        lowest = min(self.layers)
        for l in range(L, lowest - 1, -1):
            grad_w = torch.bmm(acts[l - 1].transpose(1, 2), delta).transpose(1, 2)  # [B, out, in] column-major
            grad_b = delta.sum(dim=1)                                           # [B, out]
            if l > lowest:
                back = state.weights[l - 1] if self.feedback == "backprop" else \
                    self.fa_matrices[l - 1].to(delta).expand_as(state.weights[l - 1])
                delta = torch.bmm(delta, back) * (acts[l - 1] > 0)              # [B, m, in_l] relu'(a)
            if l in self.layers:
                weights[l - 1] = state.weights[l - 1] - lr_w * grad_w
                if self.biases:
                    biases[l - 1] = state.biases[l - 1] - lr_b * grad_b
        return NetState(tuple(weights), tuple(biases)), y_hat
