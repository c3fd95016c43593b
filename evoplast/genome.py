"""Genome spec: named segments <-> one flat vector, for one genome ``[D]`` or a population ``[P, D]``.

A segment is a named tensor of the model (``layer2.feedback``, ``layer3.eta`` ...) with a shape, an
initial value, a transform from the unconstrained genome value ``g`` to the model value, and a flag
saying whether evolution searches it. Evolved segments are concatenated, in spec order, into the flat
genome; the others stay at their initial values, drawn from ``(run seed, Purpose.INIT, segment index)``.

Transforms (value = f(g)): ``identity``: scale*g (signed); ``exp``: scale*exp(g);
``softplus``: scale*softplus(g); ``sigmoid``: sigmoid(g) (feedback strengths beta in (0, 1)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import Config
from .network import ModelSpec
from .rules import coefficient_names
from .seeding import Purpose, generator

TRANSFORMS = ("identity", "exp", "softplus", "sigmoid")


@dataclass(frozen=True)
class Segment:
    """One named tensor of the genome. ``init`` holds the unconstrained initial value, shape ``shape``."""

    name: str
    shape: tuple[int, ...]
    init: Tensor
    transform: str = "identity"
    scale: float = 1.0
    evolved: bool = True

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def to_value(self, g: Tensor) -> Tensor:
        """Model value from unconstrained genome value (any leading batch dims)."""
        if self.transform == "identity":
            return g * self.scale
        if self.transform == "exp":
            return torch.exp(g) * self.scale
        if self.transform == "softplus":
            return F.softplus(g) * self.scale
        if self.transform == "sigmoid":
            return torch.sigmoid(g)
        raise ValueError(f"unknown transform {self.transform!r}")

    def to_genome(self, value: Tensor) -> Tensor:
        """Inverse of :meth:`to_value`."""
        if self.transform == "identity":
            return value / self.scale
        if self.transform == "exp":
            return torch.log(value / self.scale)
        if self.transform == "softplus":
            v = value / self.scale
            return v + torch.log(-torch.expm1(-v))  # log(exp(v) - 1), stable for large v
        if self.transform == "sigmoid":
            return torch.logit(value)
        raise ValueError(f"unknown transform {self.transform!r}")


class GenomeSpec:
    """The ordered segments of a model, and the map between named tensors and flat genomes."""

    def __init__(self, model: ModelSpec, segments: tuple[Segment, ...]):
        self.model = model
        self.segments = segments
        self.by_name = {s.name: s for s in segments}
        self.evolved = tuple(s for s in segments if s.evolved)
        self.dim = sum(s.numel for s in self.evolved)

    def __repr__(self) -> str:
        return f"GenomeSpec(dim={self.dim}, evolved={[s.name for s in self.evolved]})"

    def with_evolved(self, names: set[str] | None = None, *, all_segments: bool = False) -> "GenomeSpec":
        """The same segments (same initial values) with another choice of evolved/trained ones."""
        return GenomeSpec(self.model, tuple(
            replace(s, evolved=all_segments or (names is not None and s.name in names) or
                    (names is None and s.evolved)) for s in self.segments))

    def initial_vector(self) -> Tensor:
        """``[D]``: the flat genome of the initial values (the search's starting center)."""
        if not self.evolved:
            return torch.zeros(0)
        return torch.cat([s.init.reshape(-1) for s in self.evolved])

    def split(self, flat: Tensor) -> dict[str, Tensor]:
        """``[..., D]`` -> ``{name: [..., *shape]}`` unconstrained values of the evolved segments."""
        if flat.shape[-1] != self.dim:
            raise ValueError(f"genome has {flat.shape[-1]} numbers, this spec expects {self.dim}")
        out, offset = {}, 0
        lead = flat.shape[:-1]
        for s in self.evolved:
            out[s.name] = flat[..., offset:offset + s.numel].reshape(*lead, *s.shape)
            offset += s.numel
        return out

    def join(self, raw: dict[str, Tensor]) -> Tensor:
        """Inverse of :meth:`split`: ``{name: [..., *shape]}`` -> ``[..., D]``."""
        parts = []
        for s in self.evolved:
            t = raw[s.name]
            parts.append(t.reshape(*t.shape[:t.dim() - len(s.shape)], s.numel))
        return torch.cat(parts, dim=-1)

    def decode(self, flat: Tensor) -> dict[str, Tensor]:
        """Model values of every segment, ``{name: [P, *shape]}``, from genomes ``[P, D]`` (or ``[D]``).

        Fixed segments are expanded (not copied) to the population size. Differentiable in ``flat``.
        """
        single = flat.dim() == 1
        if single:
            flat = flat.unsqueeze(0)
        p = flat.shape[0]
        raw = self.split(flat)
        out = {}
        for s in self.segments:
            g = raw[s.name] if s.evolved else s.init.to(flat.device, flat.dtype).expand(p, *s.shape)
            out[s.name] = s.to_value(g)
        if single:
            out = {k: v[0] for k, v in out.items()}
        return out

    def encode(self, values: dict[str, Tensor]) -> Tensor:
        """Inverse of :meth:`decode` for the evolved segments: ``{name: [..., *shape]}`` -> ``[..., D]``."""
        return self.join({s.name: s.to_genome(values[s.name]) for s in self.evolved})


def build_genome_spec(cfg: Config, n_in: int, n_out: int, kind: str = "regression") -> GenomeSpec:
    """Segments of the FLP model of ``cfg`` for a task with ``n_in`` inputs and ``n_out`` outputs."""
    model = ModelSpec.from_config(cfg, n_in, n_out, kind)
    g = cfg.genome
    segments: list[Segment] = []

    def add(name, shape, init_fn, *, transform="identity", scale=1.0, evolved=True):
        gen = generator(cfg.seed, Purpose.INIT, len(segments))
        init = init_fn(gen, shape).to(torch.float32)
        segments.append(Segment(name, tuple(shape), init, transform, scale, evolved))

    def const(v):
        return lambda gen, shape: torch.full(shape, float(v))

    if model.features == "conv":  # a frozen conv stack: fixed from the seed, trainable by fine-tuning only
        from .features import conv_shapes

        for i, (c_out, c_in) in enumerate(conv_shapes(model.conv_channels), start=1):
            std = math.sqrt(2.0 / (c_in * 9))
            add(f"features.conv{i}.weight", (c_out, c_in, 3, 3),
                lambda gen, shape, s=std: torch.randn(shape, generator=gen) * s, evolved=False)
            add(f"features.conv{i}.bias", (c_out,), const(0.0), evolved=False)

    for l in range(1, model.num_layers + 1):
        n_out_l, n_in_l = model.sizes[l], model.sizes[l - 1]
        bound = cfg.network.init_gain * math.sqrt(6.0 / n_in_l) / math.sqrt(2.0)  # Kaiming uniform (relu)
        add(f"layer{l}.weight", (n_out_l, n_in_l),
            lambda gen, shape, b=bound: (torch.rand(shape, generator=gen) * 2 - 1) * b,
            evolved=g.evolve_init_weights)
        add(f"layer{l}.bias", (n_out_l,),
            lambda gen, shape, b=1 / math.sqrt(n_in_l): (torch.rand(shape, generator=gen) * 2 - 1) * b,
            evolved=g.evolve_init_weights)

    for l in model.plastic_layers:
        n_out_l, n_in_l = model.sizes[l], model.sizes[l - 1]
        taught = l == model.num_layers or g.hidden_feedback   # does the layer receive feedback at all?
        if l == model.num_layers:   # the output layer's feedback starts as the identity (delta rule)
            add(f"layer{l}.feedback", (n_out_l, n_out), lambda gen, shape: torch.eye(*shape),
                evolved=g.evolve_feedback)
        else:
            std = g.feedback_init_std / math.sqrt(n_out)
            add(f"layer{l}.feedback", (n_out_l, n_out),
                lambda gen, shape, s=std: torch.randn(shape, generator=gen) * s,
                evolved=g.evolve_feedback and taught)
        add(f"layer{l}.feedback_bias", (n_out_l,), const(0.0), evolved=g.evolve_feedback and taught)
        if taught:
            add(f"layer{l}.beta", (1, 1), const(g.beta_init), transform="sigmoid", evolved=g.evolve_beta)
        else:                       # beta = 0 exactly: the post activity is the layer's forward activity
            add(f"layer{l}.beta", (1, 1), const(0.0), evolved=False)
        gran = {"layer": (1, 1), "neuron": (n_out_l, 1), "synapse": (n_out_l, n_in_l)}[cfg.rule.granularity]
        for coef in coefficient_names(cfg.rule.name):
            r = cfg.rule
            if coef == "eta":
                add(f"layer{l}.eta", gran, const(r.eta_init), transform=r.eta_transform, scale=r.eta_scale,
                    evolved=g.evolve_rule)
            elif coef == "theta":
                add(f"layer{l}.theta", (len(r.terms), *gran), const(0.0), scale=r.term_scale,
                    evolved=g.evolve_rule)
            else:  # abcd: A = 1, B = C = D = 0 is plain Hebb scaled by eta
                add(f"layer{l}.{coef}", gran, const(1.0 if coef == "A" else 0.0), evolved=g.evolve_rule)
        if model.count_normalised:   # rate / (c + count): c = exp(g), 1 at the start
            add(f"layer{l}.count_offset", (1, 1), const(0.0), transform="exp", evolved=g.evolve_rule)
        if model.gated:              # gate = sigmoid(G s + h): G = 0, h = 3 at the start (0.95, nearly open)
            add(f"layer{l}.gate", (n_out_l, n_out), const(0.0), evolved=g.evolve_rule)
            add(f"layer{l}.gate_bias", (n_out_l,), const(3.0), evolved=g.evolve_rule)
    return GenomeSpec(model, tuple(segments))
