"""Typed experiment configuration: YAML, then ``key=value`` overrides, then checks.

Every component has a frozen dataclass whose fields carry their documentation and their allowed
range in ``metadata``. :func:`load_config` applies the YAML file, then the dotted overrides
(``network.hidden=[64,64] rule.name=oja``), then checks every value's type and range, and raises
:class:`ConfigError` with one line that names the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml


class ConfigError(ValueError):
    """A configuration problem, described in one line that says how to fix it."""


def _f(default: Any, help: str, *, min: float | None = None, max: float | None = None,
       min_exclusive: bool = False, default_factory: Any = None) -> Any:
    meta = {"help": help, "min": min, "max": max, "min_exclusive": min_exclusive}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TaskConfig:
    """The inner task and its protocol (DESIGN §3)."""

    name: Literal["sinusoid", "glyphs", "digits", "omniglot"] = _f(
        "sinusoid", "task family: sinusoid regression, or class-incremental classification of images")
    num_tasks: int = _f(10, "sinusoids (regression) or classes N (classification) per episode", min=1)
    batches_per_task: int = _f(10, "mini-batches of the stream per sinusoid / shots k per class", min=1)
    batch_size: int = _f(8, "rows m of one lifetime step (classification: images per step, usually 1)", min=1)
    query_size: int = _f(32, "held-out query points per sinusoid / query images per class", min=1)
    order: Literal["blocked", "iid"] = _f("blocked", "stream order: task after task (continual), or shuffled")
    output_classes: int = _f(0, "classification: output units (>= num_tasks, so one genome serves several N); "
                                "0 = num_tasks", min=0)
    image_size: int = _f(28, "classification: images are resized to image_size x image_size", min=4)
    data_dir: str = _f("", "omniglot: directory holding images_background/ and images_evaluation/")
    glyph_classes: int = _f(600, "glyphs: number of procedural classes (80% meta-train, 20% meta-test)", min=10)
    images_per_class: int = _f(20, "glyphs: images drawn per class", min=2)
    amplitude: tuple[float, float] = _f((0.1, 5.0), "amplitude range A ~ U[lo, hi]")
    phase: tuple[float, float] = _f((0.0, 3.141592653589793), "phase range phi ~ U[lo, hi]")
    x_range: tuple[float, float] = _f((-5.0, 5.0), "input range x ~ U[lo, hi]")


@dataclass(frozen=True)
class NetworkConfig:
    """The plastic feed-forward network (DESIGN §2)."""

    hidden: tuple[int, ...] = _f((40, 40), "hidden layer widths, input to output", min=1, max=100_000)
    plastic_layers: tuple[int, ...] = _f((), "1-based indices of plastic layers; empty = all layers", min=1)
    teaching_signal: Literal["error", "target"] = _f(
        "error", "regression teaching signal s: y - y_hat (error) or y (target)")
    feedback_activation: Literal["relu", "linear"] = _f(
        "relu", "g in f = g(B s + c) for hidden layers (the output layer's feedback is linear)")
    init_gain: float = _f(1.0, "scale of the Kaiming-uniform initial weights", min=0.0)
    features: Literal["none", "conv"] = _f(
        "none", "classification: plastic layers read the pixels, or the output of a conv stack that is frozen "
                "in the lifetime (random from the seed; meta-learned with finetune.train=['features.*'])")
    conv_channels: tuple[int, ...] = _f((16, 32), "conv stack: channels of each 3x3 stride-2 conv layer", min=1)


@dataclass(frozen=True)
class RuleConfig:
    """The local plasticity rule and how its coefficients are parameterised."""

    name: Literal["hebb", "oja", "abcd", "terms"] = _f("oja", "plasticity rule")
    granularity: Literal["layer", "neuron", "synapse"] = _f(
        "layer", "one coefficient per layer, per post-neuron, or per synapse")
    eta_transform: Literal["identity", "exp", "softplus"] = _f(
        "identity", "map from genome value g to eta: scale*g (signed), scale*exp(g), scale*softplus(g)")
    eta_scale: float = _f(0.01, "eta = eta_scale * transform(g)", min=0.0, min_exclusive=True)
    eta_init: float = _f(0.0, "initial genome value g of eta (before the transform)")
    terms: tuple[str, ...] = _f(
        ("hebb", "oja_decay"), "named terms pooled by the 'terms' rule (see evoplast.rules.TERMS)")
    term_scale: float = _f(0.01, "theta = term_scale * g for the 'terms' and 'abcd' coefficients",
                           min=0.0, min_exclusive=True)
    batch_reduction: Literal["sum", "mean"] = _f(
        "sum", "how a step's update combines the m rows of its mini-batch: sum (as in the paper's code; the "
               "step grows with m) or mean (the whole update divided by m, so eta means the same at any batch size)")


@dataclass(frozen=True)
class GenomeConfig:
    """Which parts of the model are evolved; the rest are fixed from the run seed."""

    evolve_feedback: bool = _f(True, "evolve feedback weights B and biases c")
    evolve_beta: bool = _f(True, "evolve feedback strengths beta")
    evolve_rule: bool = _f(True, "evolve the rule coefficients")
    evolve_init_weights: bool = _f(False, "evolve the initial weights and biases")
    hidden_feedback: bool = _f(True, "plastic hidden layers receive the feedback f = g(B s + c) (false: their beta is "
                                     "fixed at 0, so they learn from their forward activity alone; the ablation "
                                     "'feedback to hidden layers vs none')")
    beta_init: float = _f(0.0, "initial genome value of beta (beta = sigmoid(g))")
    feedback_init_std: float = _f(1.0, "std of hidden feedback weights, times 1/sqrt(outputs)", min=0.0)


@dataclass(frozen=True)
class EvaluationConfig:
    """How a genome is scored."""

    episodes: int = _f(4, "episodes K per genome per generation (common to the whole population)", min=1)
    heldout_episodes: int = _f(32, "episodes of the held-out evaluation", min=2)
    loss_cap: float = _f(100.0, "cap on a lifetime's query loss; non-finite counts as the cap",
                         min=0.0, min_exclusive=True)
    compile: bool = _f(False, "torch.compile the PyTorch-ops lifetime step for evolution instead of the fused "
                              "kernel (each process compiles once, about 20 s on a CPU; slower than the fused "
                              "kernel, measured)")
    fused_kernel: bool = _f(True, "on a CPU, run each lifetime step as one call of the fused C++ kernel "
                                  "(evoplast.fused) where it covers the model (hebb / oja, eta per layer or "
                                  "neuron, no conv stack): 2.5-5x faster at small layers; compiled once per "
                                  "machine (~20 s); false = PyTorch ops")
    reuse_memory: bool = _f(True, "keep memory freed between lifetime steps mapped for reuse (glibc malloc "
                                  "setting, see evoplast.runtime): fewer page faults, 10-15% faster; resident "
                                  "memory stays near its peak")
    cuda_graph: bool = _f(True, "on a GPU, capture each generation's batched lifetime once as a CUDA graph and "
                                "replay it (evoplast.graphs): one launch per generation instead of one per "
                                "kernel; same numbers as the eager ops")
    chunk_size: int = _f(0, "evaluate the population in slices of this many genomes (0 = all at once); "
                            "slices whose weights stay in cache run faster for wide layers", min=0)
    sgd_lrs: tuple[float, ...] = _f(
        (0.001, 0.003, 0.01, 0.03, 0.1, 0.3),
        "learning rates tried by the SGD / feedback-alignment baselines; the best on separate validation "
        "episodes is used", min=0.0, min_exclusive=True)


@dataclass(frozen=True)
class SearchConfig:
    """The evolution strategy (EvoTorch)."""

    algorithm: Literal["cmaes", "pgpe", "snes", "xnes", "cem"] = _f("cmaes", "EvoTorch searcher")
    generations: int = _f(200, "generations to run", min=1)
    popsize: int = _f(32, "population size", min=2, max=1_000_000)
    stdev_init: float = _f(0.1, "initial standard deviation of the search distribution",
                           min=0.0, min_exclusive=True)
    separable: bool = _f(True, "CMA-ES: adapt only the diagonal of the covariance")
    center_learning_rate: Optional[float] = _f(None, "PGPE/SNES/XNES/CEM: center learning rate (null = default)",
                                               min=0.0, min_exclusive=True)
    stdev_learning_rate: Optional[float] = _f(None, "PGPE/SNES/XNES: stdev learning rate (null = default)",
                                              min=0.0, min_exclusive=True)
    ranking_method: Literal["centered", "linear", "nes", "raw", "default"] = _f(
        "default", "fitness shaping (default = the searcher's own)")
    optimizer: Literal["clipup", "adam", "sgd"] = _f("clipup", "PGPE: optimizer of the center")
    max_speed: Optional[float] = _f(None, "PGPE with clipup: max speed (null = 2 * center lr)",
                                    min=0.0, min_exclusive=True)
    elite_ratio: float = _f(0.2, "CEM: fraction of the population used as elites", min=0.0, max=1.0,
                            min_exclusive=True)
    distributed: bool = _f(False, "PGPE/SNES/CEM: gradients estimated inside EvoTorch actors")


@dataclass(frozen=True)
class RayConfig:
    """Parallel evaluation on Ray actors."""

    num_actors: Union[Literal["auto"], int] = _f(
        "auto", "evaluation actors; 0 = evaluate in this process; auto = decided from what is there (a Ray "
                "cluster to join: one actor per GPU, else one per few CPUs; no cluster: in-process, or a local "
                "Ray when the machine has several cores and a generation is heavy); see docs/cluster.md", min=0)
    num_cpus_per_actor: float = _f(1.0, "CPUs reserved by each actor", min=0.0)
    num_gpus_per_actor: float = _f(0.0, "GPUs per actor (fractions share one GPU's memory)", min=0.0)
    address: Optional[str] = _f(None, "null = join $RAY_ADDRESS or the cluster `ray start` runs on this node if "
                                      "there is one, else no Ray unless it pays; '' = a private local Ray; "
                                      "'auto' = join the running cluster (fail if none); or host:port")


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow tracking."""

    tracking_uri: str = _f("", "MLflow tracking URI; empty = $MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    experiment: str = _f("evoplast", "MLflow experiment name")
    run_name: str = _f("", "MLflow run name (empty = generated)")
    gain_every: int = _f(10, "log the held-out learning gains every N generations", min=1)


@dataclass(frozen=True)
class CheckpointConfig:
    """Checkpoints of the evolution state."""

    every: int = _f(25, "write a checkpoint every N generations", min=1)
    dir: str = _f("checkpoints", "directory for checkpoints (one sub-directory per run)")


@dataclass(frozen=True)
class FinetuneConfig:
    """Gradient meta-training (BPTT through the same lifetime) of evolved or fresh genomes."""

    steps: int = _f(200, "meta-steps (Adam updates)", min=1)
    lr: float = _f(0.003, "Adam learning rate on the unconstrained genome values", min=0.0, min_exclusive=True)
    episodes: int = _f(8, "episodes per genome per meta-step", min=1)
    bptt_window: int = _f(0, "truncated BPTT window in lifetime steps; 0 = full BPTT through the lifetime", min=0)
    checkpoint_activations: bool = _f(False, "recompute each step's activations in the backward pass")
    train: tuple[str, ...] = _f((), "extra segments to train beside the evolved ones (glob patterns such as "
                                    "'layer*.weight', or '*' for all)")
    grad_clip: float = _f(1.0, "clip each genome's gradient to this norm (0 = no clipping)", min=0.0)
    eval_every: int = _f(25, "held-out evaluation every N meta-steps", min=1)
    top_k: int = _f(1, "fine-tune the k best genomes of the evolution run together", min=1)
    after_evolution: bool = _f(False, "scripts/evolve.py: fine-tune the search center by BPTT when the evolution "
                               "ends (the ES -> BPTT hybrid; docs/outer-trainers.md)")
    after_evolution_steps: int = _f(0, "meta-steps of that fine-tune (0 = finetune.steps)", min=0)


@dataclass(frozen=True)
class ExportConfig:
    """Export of a learned rule."""

    registered_model: str = _f("evoplast-rule", "MLflow Model Registry name (a new version per export)")


@dataclass(frozen=True)
class Config:
    """A whole experiment. ``load_config`` builds it; it never changes during a run."""

    seed: int = _f(0, "run seed: every random stream of the run is derived from it", min=0)
    device: Literal["auto", "cpu", "cuda"] = _f("auto", "device of in-process evaluation")
    task: TaskConfig = _f(None, "task", default_factory=TaskConfig)
    network: NetworkConfig = _f(None, "network", default_factory=NetworkConfig)
    rule: RuleConfig = _f(None, "plasticity rule", default_factory=RuleConfig)
    genome: GenomeConfig = _f(None, "genome", default_factory=GenomeConfig)
    evaluation: EvaluationConfig = _f(None, "evaluation", default_factory=EvaluationConfig)
    search: SearchConfig = _f(None, "search", default_factory=SearchConfig)
    ray: RayConfig = _f(None, "ray", default_factory=RayConfig)
    tracking: TrackingConfig = _f(None, "tracking", default_factory=TrackingConfig)
    checkpoint: CheckpointConfig = _f(None, "checkpoints", default_factory=CheckpointConfig)
    finetune: FinetuneConfig = _f(None, "gradient meta-training", default_factory=FinetuneConfig)
    export: ExportConfig = _f(None, "export", default_factory=ExportConfig)

    def replace(self, **overrides: Any) -> "Config":
        """A copy with dotted-key overrides applied and checked, e.g. ``cfg.replace(**{"task.order": "iid"})``."""
        return from_dict(merge_overrides(to_dict(self), [f"{k}={_yaml_scalar(v)}" for k, v in overrides.items()]))


# --------------------------------------------------------------------------------------------------
# Loading and checking


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """YAML file (or the defaults when ``path`` is None), then ``key=value`` overrides, then checks.

    Raises:
        ConfigError: one line naming the key, the value and what is allowed.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist (configs live under configs/, "
                              f"e.g. --config configs/default.yaml)")
        try:
            size = path.stat().st_size
            if size > MAX_CONFIG_BYTES:
                raise ConfigError(f"config file {str(path)!r} is {size:,} bytes; a config is a small YAML file "
                                  f"(at most {MAX_CONFIG_BYTES:,} bytes)")
            raw = path.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at "
                                  f"offset {exc.start}); give a YAML file") from None
            loaded = _safe_yaml(text, f"config file {str(path)!r}")
        except OSError as exc:
            raise ConfigError(f"config file {str(path)!r} cannot be read ({exc.strerror or exc})") from None
        except RecursionError:
            raise ConfigError(f"config file {str(path)!r} is nested too deeply to be a config") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}: "
                              f"{getattr(exc, 'problem', exc)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys, "
                              f"not a {type(loaded).__name__}")
        data = loaded
    data = merge_overrides(data, overrides)
    return from_dict(data)


def merge_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides (values parsed as YAML) to a nested dict copy."""
    out = _deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value "
                              f"(e.g. network.hidden=[64,64] or rule.name=oja)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key; write it as section.key=value")
        try:
            value = _safe_yaml(raw, f"override {key}") if raw.strip() != "" else ""
        except yaml.YAMLError:
            value = raw
        except RecursionError:
            raise ConfigError(f"override {key} is nested too deeply to be a config value") from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return out


def from_dict(data: dict[str, Any]) -> Config:
    """Build and check a :class:`Config` from a nested dict."""
    return _build(Config, data, prefix="")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain-Python dict of a config (tuples become lists), suitable for YAML."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value)
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML text (loads back to an equal config)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def flatten(cfg: Config) -> dict[str, Any]:
    """``{"network.hidden": [40, 40], ...}``: the resolved config as dotted keys (for MLflow params)."""
    flat: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(to_dict(cfg), "")
    return flat


def describe(cls: type = Config, prefix: str = "") -> list[tuple[str, str, Any]]:
    """``[(dotted key, help, default)]`` for every field: the reference of the configuration."""
    rows: list[tuple[str, str, Any]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            rows.extend(describe(hints[f.name], f"{prefix}{f.name}."))
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((f"{prefix}{f.name}", f.metadata.get("help", ""), default))
    return rows


MAX_CONFIG_BYTES = 1 << 20       # a config file larger than this is not a config
MAX_YAML_NODES = 100_000         # nodes after expanding aliases (a YAML "billion laughs" has ~10^9)


def _safe_yaml(text: str, what: str) -> Any:
    """``yaml.safe_load`` that first refuses a document whose aliases expand to more than
    ``MAX_YAML_NODES`` nodes (counted on the composed graph, each shared node once per use, memoised:
    linear in the text), so nothing downstream ever walks an exponentially large tree."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is None:
        return None
    sizes: dict[int, int] = {}

    def expanded(n: Any) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        sizes[key] = MAX_YAML_NODES + 1          # a cycle (a node inside itself) counts as too large
        if isinstance(n, yaml.SequenceNode):
            total = 1 + sum(expanded(c) for c in n.value)
        elif isinstance(n, yaml.MappingNode):
            total = 1 + sum(expanded(k) + expanded(v) for k, v in n.value)
        else:
            total = 1
        sizes[key] = min(total, MAX_YAML_NODES + 1)
        return sizes[key]

    if expanded(node) > MAX_YAML_NODES:
        raise ConfigError(f"{what} expands to more than {MAX_YAML_NODES:,} values through YAML aliases "
                          f"(&anchor / *alias); write the values out instead")
    return yaml.safe_load(text)


def _deepcopy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deepcopy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deepcopy(v) for v in data]
    return data


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(_yaml_scalar(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return yaml.safe_dump(value, default_style="'").strip().removesuffix("\n...")
    return repr(value)


def _build(cls: type, data: Any, prefix: str) -> Any:
    section = prefix.rstrip(".") or "the top level"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{section} must be a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {prefix + close[0]!r}?" if close else ""
            raise ConfigError(f"unknown key {prefix + str(key)!r} (known keys in {section}: "
                              f"{', '.join(fields)}){hint}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, data[name], f"{prefix}{name}.")
        else:
            kwargs[name] = _check_value(f"{prefix}{name}", data[name], hint, f.metadata)
    cfg = cls(**kwargs)
    _check_section(cfg, prefix)
    return cfg


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + (" or null" if type(None) in typing.get_args(hint) else "")
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}s"
        return f"a list of {len(args)} numbers"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def _check_value(key: str, value: Any, hint: Any, meta: Any) -> Any:
    def bad(what: str) -> ConfigError:
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:60] + f"... ({len(shown):,} characters)"
        return ConfigError(f"{key}={shown} is invalid: {what}")

    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for a in inner[:-1]:          # e.g. Union[Literal["auto"], int]: the first type that accepts it
            try:
                return _check_value(key, value, a, meta)
            except ConfigError:
                pass
        if len(inner) > 1 and not isinstance(value, (int, float)) or isinstance(value, bool):
            raise bad(f"expected {_type_name(hint)}")
        return _check_value(key, value, inner[-1], meta)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            extra = f" (did you mean {close[0]!r}?)" if close else ""
            raise bad(f"expected {_type_name(hint)}{extra}")
        return value
    if origin is tuple:
        args = typing.get_args(hint)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool) and args[-1] is Ellipsis:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise bad(f"expected {_type_name(hint)}")
        if args[-1] is Ellipsis:
            return tuple(_check_value(f"{key}[{i}]", v, args[0], meta) for i, v in enumerate(value))
        if len(value) != len(args):
            raise bad(f"expected {_type_name(hint)}")
        return tuple(_check_value(f"{key}[{i}]", v, a, meta) for i, (v, a) in enumerate(zip(value, args)))
    if hint is bool:
        if not isinstance(value, bool):
            raise bad("expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("expected an integer")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("expected a number")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise bad("expected a finite number")
    elif hint is str:
        if not isinstance(value, str):
            raise bad("expected a string")
        return value
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None:
        if meta.get("min_exclusive") and not value > lo:
            raise bad(f"must be > {lo:g}")
        if not meta.get("min_exclusive") and not value >= lo:
            raise bad(f"must be >= {lo:g}")
    if hi is not None and not value <= hi:
        raise bad(f"must be <= {hi:g}")
    return value


def _check_section(cfg: Any, prefix: str) -> None:
    """Checks that involve several fields of one section."""
    if isinstance(cfg, TaskConfig):
        if cfg.output_classes and cfg.output_classes < cfg.num_tasks:
            raise ConfigError(f"{prefix}output_classes={cfg.output_classes} is invalid: it must be 0 or at least "
                              f"{prefix}num_tasks={cfg.num_tasks} (one output per class of an episode)")
        if cfg.name == "omniglot" and not cfg.data_dir:
            raise ConfigError(f"{prefix}data_dir is empty: the omniglot task reads images_background/ and "
                              f"images_evaluation/ from a local directory (see README, 'Omniglot')")
        for name in ("amplitude", "phase", "x_range"):
            lo, hi = getattr(cfg, name)
            if not lo < hi:
                raise ConfigError(f"{prefix}{name}=[{lo:g}, {hi:g}] is invalid: expected [low, high] with low < high")
    if isinstance(cfg, TrackingConfig) and not cfg.experiment.strip():
        raise ConfigError(f"{prefix}experiment={cfg.experiment!r} is invalid: expected an MLflow experiment name "
                          f"(e.g. {prefix}experiment=evoplast)")
    if isinstance(cfg, RuleConfig):
        from .rules import TERMS  # local import: rules imports nothing from here

        for term in cfg.terms:
            if term not in TERMS:
                raise ConfigError(f"{prefix}terms contains {term!r}: expected names from {', '.join(TERMS)}")
        if cfg.name == "terms" and not cfg.terms:
            raise ConfigError(f"{prefix}terms=[] is invalid: the 'terms' rule needs at least one term")
    if isinstance(cfg, Config):
        depth = len(cfg.network.hidden) + 1
        for layer in cfg.network.plastic_layers:
            if layer > depth:
                raise ConfigError(f"network.plastic_layers contains {layer}: the network has layers 1..{depth} "
                                  f"(hidden={list(cfg.network.hidden)} plus the output layer)")
        if cfg.search.algorithm == "cem" and int(cfg.search.popsize * cfg.search.elite_ratio) < 2:
            raise ConfigError(f"search.elite_ratio={cfg.search.elite_ratio:g} with search.popsize={cfg.search.popsize} "
                              f"leaves {int(cfg.search.popsize * cfg.search.elite_ratio)} elites; CEM needs at least 2 "
                              f"to estimate a spread (raise one of them)")
        if cfg.search.distributed and cfg.search.algorithm not in ("pgpe", "snes", "cem"):
            raise ConfigError(f"search.distributed=true is invalid with search.algorithm={cfg.search.algorithm!r}: "
                              f"only pgpe, snes and cem estimate gradients in actors")
        if cfg.search.distributed and (cfg.ray.num_actors == "auto" or cfg.ray.num_actors < 1):
            raise ConfigError("search.distributed=true needs ray.num_actors >= 1 (the gradients are "
                              "estimated inside the actors)")
