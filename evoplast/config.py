"""Typed experiment configuration: YAML, then ``key=value`` overrides, then checks (pydantic 2).

Every section is a frozen pydantic model whose fields carry their documentation (``description``) and
their allowed range (``ge``/``gt``/``le``, ``Literal``). The field defaults *are* ``configs/default.yaml``.
:func:`load_config` applies the YAML file, then the dotted overrides (``network.hidden=[64,64] rule.name=oja``),
then validates, and raises :class:`ConfigError` with one line that names the key, the value and what is allowed.

Imports only the standard library, PyYAML and pydantic (no torch), so scripts check a config in a moment.
``python -m evoplast.config --markdown`` prints the reference (docs/configuration.md).
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

import yaml
from pydantic import (AllowInfNan, BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError,
                      field_validator, model_validator)
from pydantic_core import PydanticCustomError

from .errors import ConfigError

__all__ = ["Config", "ConfigError", "TaskConfig", "NetworkConfig", "RuleConfig", "GenomeConfig", "EvaluationConfig",
           "SearchConfig", "RayConfig", "TrackingConfig", "CheckpointConfig", "FinetuneConfig", "ExportConfig",
           "load_config", "merge_overrides", "from_dict", "upgrade", "to_dict", "to_yaml", "flatten",
           "reference", "MAX_CONFIG_BYTES", "MAX_YAML_NODES", "TERM_NAMES"]

MAX_CONFIG_BYTES = 1 << 20       # a config file larger than this is not a config
MAX_YAML_NODES = 100_000         # nodes after expanding aliases (a YAML "billion laughs" has ~10^9)

# The named terms of the 'terms' rule (evoplast.rules.TERMS implements them; a test keeps the two equal).
TERM_NAMES = ("hebb", "error_hebb", "oja_decay", "oja_subspace", "pseudo_grad", "decay")

# Leaf types: no silent coercion ("10" is not an integer, 1 is not true), floats finite, ints accepted as floats.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), AllowInfNan(False)]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]


def _as_list(value: Any) -> Any:
    """A lone scalar where a list is expected (``network.plastic_layers=3``) is a one-element list (not for
    ``network.hidden``, where 64 could mean [64] or [64, 64]: refused there)."""
    return [value] if isinstance(value, (int, float, str)) and not isinstance(value, bool) else value


def _Tuple(item: Any) -> Any:
    return Annotated[tuple[item, ...], BeforeValidator(_as_list)]


Range = tuple[Float, Float]
Term = Literal["hebb", "error_hebb", "oja_decay", "oja_subspace", "pseudo_grad", "decay"]


def _no_zero(value: Any) -> Any:
    if value == 0 and not isinstance(value, bool):
        raise ValueError("0 no longer means all/off/the same: write null")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=False)

    @model_validator(mode="before")
    @classmethod
    def _mapping(cls, data: Any) -> Any:
        return {} if data is None else data

    def replace(self, **fields: Any) -> Any:
        """A validated copy of this section with some fields changed: ``cfg.ray.replace(num_actors=2)``."""
        try:
            return type(self).model_validate({**self.model_dump(), **fields})
        except ValidationError as exc:
            raise ConfigError(_one_line(exc, type(self))) from None


def _fail(message: str) -> PydanticCustomError:
    """A cross-field problem: ``message`` is the whole one-line error."""
    return PydanticCustomError("config", message)


class TaskConfig(_Section):
    """The inner task and its protocol (docs/science.md, docs/classification.md)."""

    name: Literal["sinusoid", "glyphs", "digits", "omniglot"] = Field(
        "sinusoid", description="task family: sinusoid regression, or class-incremental classification of images")
    num_tasks: Int = Field(10, ge=1, description="sinusoids (regression) or classes N (classification) per episode")
    batches_per_task: Int = Field(10, ge=1, description="mini-batches of the stream per sinusoid / shots k per class")
    batch_size: Int = Field(8, ge=1, description="rows m of one lifetime step (classification: images per step, "
                                                 "usually 1)")
    query_size: Int = Field(32, ge=1, description="held-out query points per sinusoid / query images per class")
    order: Literal["blocked", "iid"] = Field("blocked", description="stream order: task after task (continual), "
                                                                   "or shuffled")
    output_classes: Optional[Int] = Field(None, ge=1, description="classification: output units (>= num_tasks, so "
                                          "one genome serves several N); null = num_tasks")
    image_size: Int = Field(28, ge=4, description="classification: images are resized to image_size x image_size")
    data_dir: Str = Field("", description="omniglot: directory holding images_background/ and images_evaluation/")
    glyph_classes: Int = Field(600, ge=10, description="glyphs: number of procedural classes (80% meta-train, "
                                                       "20% meta-test)")
    images_per_class: Int = Field(20, ge=2, description="glyphs: images drawn per class")
    amplitude: Range = Field((0.1, 5.0), description="amplitude range A ~ U[lo, hi]")
    phase: Range = Field((0.0, 3.141592653589793), description="phase range phi ~ U[lo, hi]")
    x_range: Range = Field((-5.0, 5.0), description="input range x ~ U[lo, hi]")

    _zero = field_validator("output_classes", mode="before")(_no_zero)

    @model_validator(mode="after")
    def _check(self) -> "TaskConfig":
        if self.output_classes is not None and self.output_classes < self.num_tasks:
            raise _fail(f"task.output_classes={self.output_classes} is invalid: it must be null or at least "
                        f"task.num_tasks={self.num_tasks} (one output per class of an episode)")
        if self.name == "omniglot" and not self.data_dir:
            raise _fail("task.data_dir is empty: the omniglot task reads images_background/ and "
                        "images_evaluation/ from a local directory (see docs/classification.md)")
        for name in ("amplitude", "phase", "x_range"):
            lo, hi = getattr(self, name)
            if not lo < hi:
                raise _fail(f"task.{name}=[{lo:g}, {hi:g}] is invalid: expected [low, high] with low < high")
        return self


class NetworkConfig(_Section):
    """The plastic feed-forward network (docs/model.md)."""

    hidden: _Tuple(Annotated[Int, Field(ge=1, le=100_000)]) = Field(
        (40, 40), description="hidden layer widths, input to output")
    plastic_layers: _Tuple(Annotated[Int, Field(ge=1)]) = Field(
        (3,), description="1-based indices of plastic layers (the output layer is len(hidden) + 1); "
                          "empty = all layers")
    teaching_signal: Literal["error", "target"] = Field(
        "error", description="regression teaching signal s: y - y_hat (error) or y (target)")
    feedback_activation: Literal["relu", "linear"] = Field(
        "relu", description="g in f = g(B s + c) for hidden layers (the output layer's feedback is linear)")
    init_gain: Float = Field(1.0, ge=0.0, description="scale of the Kaiming-uniform initial weights")
    features: Literal["none", "conv"] = Field(
        "none", description="classification: plastic layers read the pixels, or the output of a conv stack that is "
                            "frozen in the lifetime (random from the seed; meta-learned with "
                            "finetune.train=['features.*'])")
    conv_channels: _Tuple(Annotated[Int, Field(ge=1)]) = Field(
        (16, 32), description="conv stack: channels of each 3x3 stride-2 conv layer")

    @field_validator("hidden", mode="before")
    @classmethod
    def _widths(cls, value: Any) -> Any:
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            raise ValueError(f"a list of hidden layer widths is expected; write [{value}] for one hidden layer "
                             f"of {value} or [{value},{value}] for two")
        return value


class RuleConfig(_Section):
    """The local plasticity rule and how its coefficients are parameterised."""

    name: Literal["hebb", "oja", "abcd", "terms"] = Field("hebb", description="plasticity rule")
    granularity: Literal["layer", "neuron", "synapse"] = Field(
        "layer", description="one coefficient per layer, per post-neuron, or per synapse")
    eta_transform: Literal["identity", "exp", "softplus"] = Field(
        "identity", description="map from genome value g to eta: scale*g (signed), scale*exp(g), scale*softplus(g)")
    eta_scale: Float = Field(0.08, gt=0.0, description="eta = eta_scale * transform(g) (with batch_reduction mean "
                                                       "over 8 rows: the same model as sum with 0.01)")
    eta_init: Float = Field(0.0, description="initial genome value g of eta (before the transform)")
    terms: _Tuple(Term) = Field(("hebb", "oja_decay"), description="named terms pooled by the 'terms' rule")
    term_scale: Float = Field(0.01, gt=0.0, description="theta = term_scale * g for the 'terms' and 'abcd' "
                                                        "coefficients")
    batch_reduction: Literal["sum", "mean"] = Field(
        "mean", description="how a step's update combines the m rows of its mini-batch: sum (as in the paper's "
                            "code; the step grows with m) or mean (the whole update divided by m, so eta means the "
                            "same at any batch size; finite on the paper's 40 x 32 stream, docs/results.md)")
    count_normalised: Bool = Field(
        False, description="divide each plastic post-neuron's rate by (c + n), n the sum of its squared post "
                           "activity so far in the lifetime and c >= 0 a learned offset per layer (layer{l}.count_offset): "
                           "with a one-hot post, oja, eta = 1 and c = 0 a row is the exact running mean of its "
                           "class's inputs (docs/model.md)")
    gated: Bool = Field(
        False, description="a third factor: each plastic layer's post activity is multiplied by a gate "
                           "sigmoid(G_l s + h_l) per row and post-neuron, a learned function of the teaching signal "
                           "(layer{l}.gate, layer{l}.gate_bias), so a lifetime can switch plasticity off where "
                           "it would overwrite (docs/model.md)")

    @model_validator(mode="after")
    def _check(self) -> "RuleConfig":
        if self.name == "terms" and not self.terms:
            raise _fail("rule.terms=[] is invalid: the 'terms' rule needs at least one term")
        if self.count_normalised and self.batch_reduction == "mean":
            raise _fail("rule.count_normalised=true needs rule.batch_reduction=sum: the count already divides "
                        "by the rows seen, the mean would divide by the batch size again")
        return self


class GenomeConfig(_Section):
    """Which parts of the model are evolved; the rest are fixed from the run seed."""

    evolve_feedback: Bool = Field(True, description="evolve feedback weights B and biases c")
    evolve_beta: Bool = Field(True, description="evolve feedback strengths beta")
    evolve_rule: Bool = Field(True, description="evolve the rule coefficients")
    evolve_init_weights: Bool = Field(True, description="evolve the initial weights and biases")
    hidden_feedback: Bool = Field(True, description="plastic hidden layers receive the feedback f = g(B s + c) "
                                  "(false: their beta is fixed at 0, so they learn from their forward activity alone; "
                                  "the ablation 'feedback to hidden layers vs none')")
    beta_init: Float = Field(0.0, description="initial genome value of beta (beta = sigmoid(g))")
    feedback_init_std: Float = Field(1.0, ge=0.0, description="std of hidden feedback weights, times "
                                                               "1/sqrt(outputs)")


class EvaluationConfig(_Section):
    """How a genome is scored."""

    episodes: Int = Field(4, ge=1, description="episodes K per genome per generation (common to the whole "
                                               "population)")
    heldout_episodes: Int = Field(32, ge=2, description="episodes of the held-out evaluation")
    loss_cap: Float = Field(100.0, gt=0.0, description="cap on a lifetime's query loss; non-finite counts as the cap")
    compile: Bool = Field(False, description="torch.compile the PyTorch-ops lifetime step for evolution instead of "
                                             "the fused kernel (each process compiles once, about 20 s on a CPU; "
                                             "slower than the fused kernel, measured)")
    fused_kernel: Bool = Field(True, description="on a CPU, run each lifetime step as one call of the fused C++ "
                                                 "kernel (evoplast.fused) where it covers the model (hebb / oja, eta "
                                                 "per layer or neuron, no conv stack): 2.5-5x faster at small layers; "
                                                 "compiled once per machine and checkout (~20 s); false = PyTorch ops")
    reuse_memory: Bool = Field(True, description="keep memory freed between lifetime steps mapped for reuse (glibc "
                                                 "malloc setting, see evoplast.malloc): fewer page faults, 10-15% "
                                                 "faster; resident memory stays near its peak")
    cuda_graph: Bool = Field(True, description="on a GPU, capture each generation's batched lifetime once as a CUDA "
                                               "graph and replay it (evoplast.cuda_graphs): one launch per generation "
                                               "instead of one per kernel; same numbers as the eager ops")
    chunk_size: Optional[Int] = Field(None, ge=1, description="evaluate the population in slices of this many "
                                      "genomes (null = all at once); slices whose weights stay in cache run faster "
                                      "for wide layers")
    sgd_lrs: _Tuple(Annotated[Float, Field(gt=0.0)]) = Field(
        (0.001, 0.003, 0.01, 0.03, 0.1, 0.3),
        description="learning rates tried by the SGD / feedback-alignment baselines; the best on separate "
                    "validation episodes is used")

    _zero = field_validator("chunk_size", mode="before")(_no_zero)

    @field_validator("sgd_lrs", mode="before")
    @classmethod
    def _some_lrs(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)) and not value:
            raise ValueError("the SGD and feedback-alignment baselines need at least one learning rate "
                             "(e.g. [0.01, 0.1])")
        return value


class SearchConfig(_Section):
    """The evolution strategy (EvoTorch)."""

    algorithm: Literal["cmaes", "pgpe", "snes", "xnes", "cem"] = Field(
        "pgpe", description="EvoTorch searcher (a large genome: PGPE, not CMA-ES; docs/evolution.md)")
    generations: Int = Field(250, ge=1, description="generations to run")
    popsize: Int = Field(32, ge=2, le=1_000_000, description="population size")
    stdev_init: Float = Field(0.1, gt=0.0, description="initial standard deviation of the search distribution")
    separable: Bool = Field(True, description="CMA-ES: adapt only the diagonal of the covariance")
    center_learning_rate: Optional[Float] = Field(
        0.2, gt=0.0, description="PGPE/SNES/XNES/CEM: center learning rate (PGPE with ClipUp: the step; "
                                 "null = the searcher's default)")
    stdev_learning_rate: Optional[Float] = Field(0.1, gt=0.0, description="PGPE/SNES/XNES: stdev learning rate "
                                                                          "(null = the searcher's default)")
    ranking_method: Literal["centered", "linear", "nes", "raw", "default"] = Field(
        "default", description="fitness shaping (default = the searcher's own)")
    optimizer: Literal["clipup", "adam", "sgd"] = Field("clipup", description="PGPE: optimizer of the center")
    max_speed: Optional[Float] = Field(None, gt=0.0, description="PGPE with clipup: max speed (null = 2 * center lr)")
    elite_ratio: Float = Field(0.2, gt=0.0, le=1.0, description="CEM: fraction of the population used as elites")
    sampling: Literal["rows", "population"] = Field(
        "rows", description="how a generation's population is drawn: rows (each row from (seed, generation, "
                            "row): an actor draws only its own rows) or population (EvoTorch's one generator, "
                            "as before December 2026: reproduces the numbers published until then; every actor "
                            "then draws the whole population)")


class RayConfig(_Section):
    """Parallel evaluation on Ray actors."""

    num_actors: Union[Literal["auto"], Annotated[Int, Field(ge=0)]] = Field(
        "auto", description="evaluation actors; 0 = evaluate in this process; auto = decided from what is there "
                            "(a Ray cluster to join: one actor per GPU, else one per few CPUs; no cluster: "
                            "in-process, or a local Ray when the machine has several cores and a generation is "
                            "heavy); see docs/cluster.md")
    num_cpus_per_actor: Float = Field(1.0, ge=0.0, description="CPUs reserved by each actor")
    num_gpus_per_actor: Float = Field(0.0, ge=0.0, description="GPUs per actor (fractions share one GPU's memory)")
    chunks_per_actor: Union[Literal["auto"], Annotated[Int, Field(ge=1)]] = Field(
        "auto", description="the population is split into num_actors x this many chunks, each handed to whichever "
                            "actor is free (a slow node takes fewer); auto = as many (1-8) as keep >= 1,024 "
                            "lifetimes (GPU actors) or >= 16 (CPU actors) in a chunk; see docs/cluster.md")
    address: Optional[Str] = Field(None, description="null = join $RAY_ADDRESS or the cluster `ray start` runs on "
                                                     "this node if there is one, else no Ray unless it pays; '' = a "
                                                     "private local Ray; 'auto' = join the running cluster (fail if "
                                                     "none); or host:port")


class TrackingConfig(_Section):
    """MLflow tracking."""

    tracking_uri: Str = Field("", description="MLflow tracking URI; empty = $MLFLOW_TRACKING_URI or "
                                              "sqlite:///mlflow.db (the scripts' --tracking-uri sets it)")
    experiment: Str = Field("evoplast", description="MLflow experiment name")
    run_name: Str = Field("", description="MLflow run name (empty = generated)")
    gain_every: Int = Field(100, ge=1, description="log the held-out learning gains every N generations")

    @model_validator(mode="after")
    def _check(self) -> "TrackingConfig":
        if not self.experiment.strip():
            raise _fail(f"tracking.experiment={self.experiment!r} is invalid: expected an MLflow experiment name "
                        f"(e.g. tracking.experiment=evoplast)")
        return self


class CheckpointConfig(_Section):
    """Checkpoints of the evolution state."""

    every: Int = Field(200, ge=1, description="write a checkpoint every N generations")
    dir: Str = Field("checkpoints", description="directory for checkpoints (one sub-directory per run)")


class FinetuneConfig(_Section):
    """Gradient meta-training (BPTT through the same lifetime) of evolved or fresh genomes."""

    steps: Int = Field(200, ge=1, description="meta-steps (Adam updates)")
    lr: Float = Field(0.01, gt=0.0, description="Adam learning rate on the unconstrained genome values")
    episodes: Int = Field(8, ge=1, description="episodes per genome per meta-step")
    bptt_window: Optional[Int] = Field(None, ge=1, description="truncated BPTT window in lifetime steps; "
                                                               "null = full BPTT through the lifetime")
    checkpoint_activations: Bool = Field(False, description="recompute each step's activations in the backward pass")
    train: _Tuple(Str) = Field((), description="extra segments to train beside the evolved ones (glob patterns such "
                                               "as 'layer*.weight', or '*' for all)")
    grad_clip: Float = Field(1.0, ge=0.0, description="clip each genome's gradient to this norm (0 = no clipping)")
    eval_every: Int = Field(25, ge=1, description="held-out evaluation every N meta-steps")
    top_k: Int = Field(1, ge=1, description="fine-tune the k best genomes of the evolution run together")
    after_evolution: Bool = Field(True, description="scripts/evolve.py: fine-tune the search center by BPTT when "
                                                    "the evolution ends (the ES -> BPTT hybrid: far better than ES "
                                                    "alone, level with BPTT alone at equal time: "
                                                    "docs/outer-trainers.md)")
    after_evolution_steps: Optional[Int] = Field(1000, ge=1, description="meta-steps of that fine-tune "
                                                                         "(null = finetune.steps)")

    _zero = field_validator("bptt_window", "after_evolution_steps", mode="before")(_no_zero)


class ExportConfig(_Section):
    """Export of a learned rule."""

    registered_model: Str = Field("evoplast-rule", description="MLflow Model Registry name (a new version per "
                                                               "export)")


class Config(_Section):
    """A whole experiment. ``load_config`` builds it; it never changes during a run."""

    seed: Int = Field(0, ge=0, description="run seed: every random stream of the run is derived from it")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="device of in-process evaluation")
    task: TaskConfig = Field(default_factory=TaskConfig, description="task")
    network: NetworkConfig = Field(default_factory=NetworkConfig, description="network")
    rule: RuleConfig = Field(default_factory=RuleConfig, description="plasticity rule")
    genome: GenomeConfig = Field(default_factory=GenomeConfig, description="genome")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig, description="evaluation")
    search: SearchConfig = Field(default_factory=SearchConfig, description="search")
    ray: RayConfig = Field(default_factory=RayConfig, description="ray")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="tracking")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="checkpoints")
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig, description="gradient meta-training")
    export: ExportConfig = Field(default_factory=ExportConfig, description="export")

    @model_validator(mode="after")
    def _check(self) -> "Config":
        depth = len(self.network.hidden) + 1
        for layer in self.network.plastic_layers:
            if layer > depth:
                raise _fail(f"network.plastic_layers contains {layer}: the network has layers 1..{depth} "
                            f"(hidden={list(self.network.hidden)} plus the output layer)")
        s = self.search
        if s.algorithm == "pgpe" and s.popsize % 2:
            raise _fail(f"search.popsize={s.popsize} is odd: PGPE samples in mirrored pairs, so the population "
                        f"must be even (e.g. search.popsize={s.popsize + 1})")
        if s.algorithm == "cem" and int(s.popsize * s.elite_ratio) < 2:
            raise _fail(f"search.elite_ratio={s.elite_ratio:g} with search.popsize={s.popsize} leaves "
                        f"{int(s.popsize * s.elite_ratio)} elites; CEM needs at least 2 to estimate a spread "
                        f"(raise one of them)")
        return self

    def replace(self, **overrides: Any) -> "Config":
        """A validated copy with dotted-key overrides, e.g. ``cfg.replace(**{"task.order": "iid", "seed": 1})``."""
        data = self.model_dump()
        for key, value in overrides.items():
            _set(data, key, value)
        return from_dict(data)


# --------------------------------------------------------------------------------------------------
# Loading


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """YAML file (or the defaults, which equal configs/default.yaml, when ``path`` is None), then
    ``key=value`` overrides, then checks.

    Raises:
        ConfigError: one line naming the key, the value and what is allowed.
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_yaml_file(Path(path))
    return from_dict(merge_overrides(data, overrides))


def _read_yaml_file(path: Path) -> dict[str, Any]:
    where = f"config file {str(path)!r}"
    if not path.is_file():
        raise ConfigError(f"{where} does not exist (configs live under configs/, e.g. --config configs/default.yaml)")
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{where} is {size:,} bytes; a config is a small YAML file "
                              f"(at most {MAX_CONFIG_BYTES:,} bytes)")
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{where} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                              f"give a YAML file") from None
        loaded = _safe_yaml(text, where)
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read ({exc.strerror or exc})") from None
    except RecursionError:
        raise ConfigError(f"{where} is nested too deeply to be a config") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{where} is not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{where} must hold a mapping of keys, not a {type(loaded).__name__}")
    return loaded


def _set(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def merge_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides (values parsed as YAML) to a nested dict copy."""
    out = _copy(data)
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
        _set(out, key, value)
    return out


def from_dict(data: Any) -> Config:
    """Build and check a :class:`Config` from a nested dict; :class:`ConfigError` (one line) if it is bad."""
    if not isinstance(data, dict):
        raise ConfigError(f"the top level must be a mapping of keys, got {_show(data)}")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def upgrade(data: Any) -> Any:
    """A config stored by an older evoplast (a checkpoint's or a run's ``config.yaml``), in today's keys:
    ``search.distributed: false`` is dropped, and 0 in the fields where it meant all/off/the same is null."""
    if not isinstance(data, dict):
        return data
    data = _copy(data)
    search = data.get("search")
    if isinstance(search, dict) and search.get("distributed") is False:
        del search["distributed"]
    for section, key in (("evaluation", "chunk_size"), ("finetune", "bptt_window"), ("task", "output_classes"),
                         ("finetune", "after_evolution_steps")):
        node = data.get(section)
        if isinstance(node, dict) and node.get(key) == 0 and node.get(key) is not False:
            node[key] = None
    return data


def to_dict(cfg: BaseModel) -> dict[str, Any]:
    """Nested plain-Python dict of a config (tuples become lists), suitable for YAML."""
    return _lists(cfg.model_dump())


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


def _copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_copy(v) for v in data]
    return data


def _lists(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _lists(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_lists(v) for v in data]
    return data


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
            _no_duplicate_keys(n, what)
            total = 1 + sum(expanded(k) + expanded(v) for k, v in n.value)
        else:
            total = 1
        sizes[key] = min(total, MAX_YAML_NODES + 1)
        return sizes[key]

    if expanded(node) > MAX_YAML_NODES:
        raise ConfigError(f"{what} expands to more than {MAX_YAML_NODES:,} values through YAML aliases "
                          f"(&anchor / *alias); write the values out instead")
    return yaml.safe_load(text)


def _no_duplicate_keys(node: Any, what: str) -> None:
    """A key given twice in one mapping (YAML keeps the last silently, dropping the first block) is refused."""
    seen: dict[Any, int] = {}
    for k, _ in node.value:
        if isinstance(k, yaml.ScalarNode):
            line = k.start_mark.line + 1
            if k.value in seen:
                raise ConfigError(f"{what}: key {k.value!r} appears twice in one mapping (lines {seen[k.value]} and "
                                  f"{line}); YAML would keep only the last; merge them into one")
            seen[k.value] = line


# --------------------------------------------------------------------------------------------------
# One-line errors over pydantic's ValidationError, and the reference generated from the fields


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:60] + f"... ({len(shown):,} characters)"


def _num(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def _allowed(annotation: Any, metadata: list[Any] = ()) -> str:
    """What a field accepts, in words: ``an integer >= 1``, ``one of 'a', 'b'``, ``a list of ...``, ``or null``."""
    bounds = []
    metadata = [x for m in metadata for x in ([m, *m.metadata] if hasattr(m, "metadata") else [m])]
    for m in metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<=")):
            if getattr(m, attr, None) is not None:
                bounds.append(f"{sign} {_num(getattr(m, attr))}")
    origin = get_origin(annotation)
    if origin is Annotated:
        inner, *extra = get_args(annotation)
        return _allowed(inner, [*metadata, *extra])
    if origin is Literal:
        choices = get_args(annotation)
        return repr(choices[0]) if len(choices) == 1 else "one of " + ", ".join(repr(a) for a in choices)
    if origin is Union:
        args = get_args(annotation)
        words = " or ".join(_allowed(a, metadata) for a in args if a is not type(None))
        return words + (" or null" if type(None) in args else "")
    if origin is tuple:
        args = get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of ({_allowed(args[0])})"
        return f"a list of {len(args)} numbers"
    base = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(annotation,
                                                                                             str(annotation))
    return " ".join([base, " and ".join(bounds)]).strip()


def _field_allowed(field: Any) -> str:
    return _allowed(field.annotation, list(field.metadata))


def _one_line(exc: ValidationError, root: type = None) -> str:
    """The first error as one line: the dotted key, the value, what is allowed (and a close match)."""
    err = exc.errors(include_url=False)[0]
    kind, loc, value = err["type"], err["loc"], err.get("input")
    if kind == "config":
        return err["msg"]
    model: Any = root or Config
    key, field, rest = "", None, []
    for i, part in enumerate(loc):
        if field is None and isinstance(part, str) and part in model.model_fields:
            field = model.model_fields[part]
            key = f"{key}.{part}" if key else part
            sub = field.annotation
            if isinstance(sub, type) and issubclass(sub, BaseModel) and i + 1 < len(loc):
                model, field = sub, None
            elif isinstance(sub, type) and issubclass(sub, BaseModel):
                model = sub
        elif field is None and kind == "extra_forbidden":
            name = f"{key}.{part}" if key else str(part)
            known = list(model.model_fields)
            close = difflib.get_close_matches(str(part), known, n=1)
            hint = f"; did you mean {(key + '.' if key else '') + close[0]!r}?" if close else ""
            return f"unknown key {name!r} (known keys in {key or 'the top level'}: {', '.join(known)}){hint}"
        else:
            rest.append(part)
    if isinstance(model, type) and field is None or kind in ("model_type", "model_attributes_type"):
        return f"{key or 'the top level'} must be a mapping of keys, got {_show(value)}"
    indices = "".join(f"[{p}]" for p in rest if isinstance(p, int)) if kind != "missing" else ""
    in_union = any(isinstance(p, str) for p in rest)
    shown = f"{key}{indices}={_show(value)}"
    if kind == "value_error":
        return f"{shown} is invalid: {err['msg'].removeprefix('Value error, ')}"
    ctx = err.get("ctx", {})
    if in_union:
        what = f"expected {_field_allowed(field)}"
    elif kind == "literal_error":
        choices = [c.strip().strip("'") for c in ctx.get("expected", "").replace(" or ", ", ").split(", ")]
        close = difflib.get_close_matches(str(value), choices, n=1)
        what = f"expected one of {ctx.get('expected', '').replace(' or ', ', ')}" + (
            f" (did you mean {close[0]!r}?)" if close else "")
    elif kind.startswith("int_"):
        what = "expected an integer"
    elif kind == "finite_number":
        what = "expected a finite number"
    elif kind.startswith("float_"):
        what = "expected a number"
    elif kind.startswith("bool_"):
        what = "expected true or false"
    elif kind.startswith("string_"):
        what = "expected a string"
    elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        sign = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()))
        what = f"must be {sign} {bound:g}"
    else:
        what = f"expected {_field_allowed(field)}" if field is not None else err["msg"]
    return f"{shown} is invalid: {what}"


def _default(field: Any) -> Any:
    return field.get_default(call_default_factory=True)


def reference(cls: type = Config, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """``[(dotted key, allowed values, default, help)]`` for every leaf field, in declaration order."""
    rows: list[tuple[str, str, Any, str]] = []
    for name, field in cls.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            rows.extend(reference(sub, f"{prefix}{name}."))
        else:
            rows.append((f"{prefix}{name}", _field_allowed(field), _lists(_default(field)), field.description or ""))
    return rows


def _yaml_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("\n...").strip()


def help_text() -> str:
    """One line per key: ``key = default  (allowed)  help``; what ``--help-config`` prints."""
    return "\n".join(f"{key} = {_yaml_value(default)}  ({allowed})  {help}"
                     for key, allowed, default, help in reference()) + "\n"


def markdown() -> str:
    """docs/configuration.md: a short introduction, then one table per section generated from the fields."""
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m evoplast.config --markdown > docs/configuration.md`; do not edit by hand. -->",
        "",
        "A run reads a YAML file (`--config PATH`; none = the defaults below, which are what",
        "`configs/default.yaml` holds), then `key=value` overrides on the command line (values are YAML:",
        "`network.hidden=[64,64] rule.name=oja search.center_learning_rate=null`), then checks every value.",
        "A bad key or value stops the script at once with one line that names the key, the value and what is",
        "allowed (exit code 2). `--help-config` in any script prints this list, one line per key.",
        "Other files under `configs/` list only what differs from the defaults.",
        "",
    ]
    section = None
    for key, allowed, default, help in reference():
        head = key.split(".")[0] if "." in key else ""
        if head != section:
            section = head
            doc = (Config.model_fields[head].annotation.__doc__ or "").strip() if head else "The run as a whole."
            out += [*([""] if section != "" else []), f"## `{head}`" if head else "## top level", "", doc, "",
                    "| key | default | allowed | help |", "|---|---|---|---|"]
        cell = help.replace("|", "\\|")
        out.append(f"| `{key}` | `{_yaml_value(default)}` | {allowed.replace('|', chr(92) + '|')} | {cell} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m evoplast.config [--markdown]``: the reference, one line per key or as Markdown."""
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["--markdown"]):
        print("usage: python -m evoplast.config [--markdown]", file=sys.stderr)
        return 2
    sys.stdout.write(markdown() if args else help_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
