"""Class-incremental classification: loaders, the protocol, baselines and analyses."""

import json

import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from evoplast.science.analysis import forgetting_matrix, oml_init, oml_spec, score_oml, update_gradient_cosine
from evoplast.config import ConfigError
from evoplast.evaluation import Evaluator
from evoplast.learners import GradientLearner
from evoplast.network import ModelSpec, forward
from evoplast.seeding import Purpose
from evoplast.tasks.images import DatasetError, digits, glyphs, omniglot

from . import scripts
from .conftest import small_config
from .test_evolution import quiet
from evoplast.science import report as science_report

GLYPHS = ["task.name=glyphs", "task.glyph_classes=40", "task.images_per_class=12", "task.image_size=12",
          "task.num_tasks=4", "task.batches_per_task=3", "task.batch_size=1", "task.query_size=4",
          "network.hidden=[32]", "network.plastic_layers=[2]", "network.teaching_signal=target",
          "rule.name=hebb", "rule.eta_scale=0.1", "rule.eta_init=1.0", "genome.evolve_init_weights=true",
          "evaluation.episodes=4", "evaluation.heldout_episodes=16", "evaluation.sgd_lrs=[0.03,0.1,0.3]",
          "search.algorithm=pgpe", "search.popsize=16", "search.stdev_init=0.05", "search.center_learning_rate=0.2",
          "tracking.gain_every=10", "checkpoint.every=100"]


def glyph_cfg(*extra):
    return small_config(GLYPHS + list(extra))


def _write_omniglot(root, alphabets=2, characters=3, drawings=6, size=105):
    """A small copy of Omniglot's layout: split/alphabet/character/drawing.png, black ink on white."""
    g = torch.Generator().manual_seed(0)
    for split in ("images_background", "images_evaluation"):
        for a in range(alphabets):
            for c in range(characters):
                folder = root / split / f"Alphabet_{a}" / f"character{c + 1:02d}"
                folder.mkdir(parents=True)
                for d in range(drawings):
                    img = torch.full((size, size), 255, dtype=torch.uint8)
                    r = int(torch.randint(10, 90, (1,), generator=g))
                    img[r:r + 8, 10:95] = 0                  # a horizontal stroke
                    img[10:95, 20 + 10 * c:28 + 10 * c] = 0  # a vertical stroke that names the character
                    Image.fromarray(img.numpy()).save(folder / f"{a}{c}_{d:02d}.png")


def test_omniglot_loader_reads_the_distributed_layout(tmp_path):
    _write_omniglot(tmp_path)
    data = omniglot(str(tmp_path), 28)
    assert data.train.shape == (6, 6, 28, 28) and data.test.shape == (6, 6, 28, 28)
    assert 0.0 <= data.train.min() and data.train.max() <= 1.0
    assert data.train.mean() < 0.5                           # ink is 1 on a 0 background
    # the vertical stroke moves with the character: classes differ, drawings of one class agree on it
    col = data.train[:, 0].mean(1)                           # [classes, 28] column profile
    assert col[0].argmax() != col[1].argmax()
    cfg = small_config(["task.name=omniglot", f"task.data_dir={tmp_path}", "task.num_tasks=3",
                             "task.batches_per_task=2", "task.batch_size=1", "task.query_size=3"])
    eps = Evaluator(cfg).episodes(Purpose.HELDOUT, 0, 2)
    assert eps.stream_x.shape == (2, 6, 1, 28 * 28)


@pytest.mark.parametrize("damage, fragment", [
    ("missing", "is not a directory"),
    ("no_evaluation", "images_evaluation' does not exist"),
    ("uneven", "holds 5 PNG drawings, expected 6"),
    ("unreadable", "cannot read"),
])
def test_omniglot_problems_are_one_line_with_what_to_do(tmp_path, damage, fragment):
    root = tmp_path / "omni"
    if damage != "missing":
        _write_omniglot(root)
    if damage == "no_evaluation":
        import shutil

        shutil.rmtree(root / "images_evaluation")
    if damage == "uneven":
        next((root / "images_background" / "Alphabet_1" / "character02").glob("*.png")).unlink()
    if damage == "unreadable":
        next((root / "images_background" / "Alphabet_0" / "character01").glob("*.png")).write_bytes(b"not a png")
    omniglot.cache_clear()
    with pytest.raises(DatasetError) as info:
        omniglot(str(root), 28)
    assert fragment in str(info.value) and "github.com/brendenlake/omniglot" in str(info.value)
    assert "\n" not in str(info.value)


def test_script_with_missing_omniglot_exits_with_one_line(store, tmp_path, capsys):
    code = scripts.run("evolve", ["task.name=omniglot", f"task.data_dir={tmp_path}/nothing", "search.generations=1"])
    assert code == 1 and "Omniglot" in scripts.error_line(capsys.readouterr().err)


def test_glyphs_are_deterministic_and_digits_split_images():
    a, b, c = glyphs(20, 4, 12, 0), glyphs(20, 4, 12, 0), glyphs(20, 4, 12, 1)
    assert torch.equal(a.train, b.train) and not torch.equal(a.train, c.train)
    assert a.train.shape == (16, 4, 12, 12) and a.test.shape == (4, 4, 12, 12)
    # drawings of one class are closer to each other than to other classes
    flat = a.train.reshape(16, 4, -1)
    within = (flat[:, 0] - flat[:, 1]).norm(dim=-1).mean()
    between = (flat[:, 0] - flat.roll(1, 0)[:, 1]).norm(dim=-1).mean()
    assert within < between
    d = digits(8)
    assert d.train.shape[0] == 10 and d.train.shape[2:] == (8, 8)
    assert not any(torch.equal(x, y) for x in d.train[3] for y in d.test[3])


def test_protocol_no_query_image_in_the_stream_and_labels_remapped():
    cfg = glyph_cfg("task.output_classes=10")
    ev = Evaluator(cfg)
    eps = ev.episodes(Purpose.HELDOUT, 0, 6)
    test_pool = ev.task.images.test.reshape(-1, 144)
    train_pool = ev.task.images.train.reshape(-1, 144)
    first_labels = []

    def dist(a, b):  # exact distances (cdist's matmul shortcut is off by ~1e-3 for equal rows)
        return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")

    for k in range(6):
        stream = eps.stream_x[k].reshape(-1, 144)
        query = eps.query_x[k].reshape(-1, 144)
        assert not (dist(stream, query) < 1e-6).any()                 # no query image in the stream
        assert (dist(stream, test_pool).min(1).values < 1e-6).all()   # meta-test classes only
        assert not (dist(stream, train_pool).min(1).values < 1e-6).any()
        labels = eps.stream_y[k].reshape(-1)
        assert labels.unique().numel() == 4 and labels.max() < ev.task.n_out
        assert torch.equal(eps.stream_task[k].reshape(-1), torch.arange(4).repeat_interleave(3))  # class after class
        assert torch.equal(labels, eps.query_y[k][eps.stream_task[k].reshape(-1), 0])
        first_labels.append(int(labels[0]))
    assert len(set(first_labels)) > 1                                  # labels are re-mapped per episode
    iid = ev.episodes(Purpose.HELDOUT, 0, 1, order="iid")
    assert not torch.equal(iid.stream_task[0].reshape(-1), torch.arange(4).repeat_interleave(3))
    with pytest.raises(ConfigError, match="need 30 images"):
        Evaluator(glyph_cfg("task.batches_per_task=26"))


def test_sgd_classification_step_is_autograd_cross_entropy():
    sizes, B, m, lr = (6, 5, 3), 2, 4, 0.2
    spec = ModelSpec(sizes, plastic_layers=(), rule="hebb", kind="classification")
    g = torch.Generator().manual_seed(0)
    weights = tuple(torch.randn(B, sizes[l], sizes[l - 1], generator=g) for l in (1, 2))
    biases = tuple(torch.randn(B, sizes[l], generator=g) for l in (1, 2))
    x, y = torch.randn(B, m, 6, generator=g), torch.randint(0, 3, (B, m), generator=g)
    params = {f"layer{l}.weight": weights[l - 1] for l in (1, 2)} | {f"layer{l}.bias": biases[l - 1] for l in (1, 2)}
    for layers in (None, (2,)):
        learner = GradientLearner(spec, lr, layers=layers)
        new = learner.step(params, learner.init_state(params), x, y)
        leaves = [t.clone().requires_grad_(True) for t in (*weights, *biases)]
        _, y_hat = forward(tuple(leaves[:2]), tuple(leaves[2:]), x)
        torch.nn.functional.cross_entropy(y_hat.transpose(1, 2), y, reduction="none").mean(-1).sum().backward()
        for i, (got, leaf) in enumerate(zip((*new.weights, *new.biases), leaves)):
            updated = layers is None or i % 2 == 1              # head-only (OML) leaves layer 1 alone
            expected = leaf.detach() - lr * leaf.grad if updated else leaf.detach()
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_rule_with_exact_error_feedback_points_along_the_negative_gradient():
    """The delta-rule genome's update is an SGD step of the output layer: cosine with -grad is 1."""
    cfg = small_config(["network.plastic_layers=[3]", "rule.name=hebb", "rule.eta_scale=0.005",
                             "rule.eta_init=1.0", "genome.beta_init=30"])
    ev = Evaluator(cfg)
    cos = update_gradient_cosine(ev, ev.spec.initial_vector(), ev.episodes(Purpose.HELDOUT, 0, 3))
    assert cos.shape == (100, 1)
    torch.testing.assert_close(cos, torch.ones_like(cos), atol=1e-4, rtol=0)
    oja = Evaluator(small_config(["rule.name=oja", "rule.eta_init=1.0", "network.plastic_layers=[1,3]"]))
    cos = update_gradient_cosine(oja, oja.spec.initial_vector(), oja.episodes(Purpose.HELDOUT, 0, 3))
    assert cos.shape == (100, 2) and (cos.abs() <= 1 + 1e-5).all() and (cos[:, 0].abs() < 0.99).all()


def test_forgetting_matrix_shows_sgd_forgetting_on_a_blocked_stream():
    cfg = glyph_cfg()
    ev = Evaluator(cfg)
    g = ev.spec.initial_vector()
    eps = ev.episodes(Purpose.HELDOUT, 0, 16)
    sgd = forgetting_matrix(ev, g, eps, learner=science_report.sgd_learner(ev), extra={"sgd.lr": torch.tensor([0.3])})
    acc = sgd["accuracy"]
    assert acc.shape == (4, 4)
    assert acc[0, 0] > 0.95                           # right after the first class, everything is that class
    assert acc[-1, 0] < acc[0, 0] - 0.3                # and it is forgotten by the end
    assert (acc.triu(1) < 0.05).all()                  # classes not seen yet are not predicted
    rule = forgetting_matrix(ev, g, eps)
    assert rule["loss"].shape == (4, 4) and rule["accuracy"][0, 0] > 0.5   # the seed genome learns a little too


def test_oml_baseline_meta_learns_an_init_for_sgd_of_the_head():
    cfg = glyph_cfg("finetune.lr=0.01", "finetune.episodes=4")
    ev = Evaluator(cfg)
    held = ev.episodes(Purpose.HELDOUT, 0, 16)
    spec0 = oml_spec(ev.spec, 0.03)
    learner = GradientLearner(spec0.model, 0.03, layers=(2,))
    before = score_oml(ev, spec0, spec0.initial_vector(), learner, held).accuracy.item()
    spec, genome, learner = oml_init(cfg, ev, 40)
    after = score_oml(ev, spec, genome, learner, held).accuracy.item()
    assert after > before + 0.05, (before, after)
    assert spec.split(genome.reshape(1, -1))["sgd.lr"].shape == (1, 1)


def test_conv_features_shared_and_per_genome_agree_and_train_by_bptt():
    cfg = glyph_cfg("network.features=conv", "network.conv_channels=[4,8]", "finetune.train=['features.*']")
    from evoplast.runs.finetune import train_spec_of
    from evoplast.trainers.bptt import meta_loss_backward

    evo, spec = train_spec_of(cfg)
    assert evo.model.sizes[0] == 8 * 9 and "features.conv1.weight" in spec.by_name
    ev = Evaluator(cfg, spec=spec)
    g = spec.initial_vector().reshape(1, -1).repeat(2, 1)
    shared = ev.score(g).loss                        # identical conv stacks: features computed once
    g2 = g.clone()
    g2[1] += 1e-7 * torch.randn(g.shape[1])          # different (by a hair): one conv stack per genome
    per_genome = ev.score(g2).loss
    torch.testing.assert_close(shared, per_genome, rtol=1e-4, atol=1e-5)
    g = g[:1].clone().requires_grad_(True)
    meta_loss_backward(ev.learner, spec, g, ev.episodes(Purpose.FINETUNE, 0, 2))
    assert spec.split(g.grad)["features.conv1.weight"].abs().sum() > 0


def test_evolving_a_rule_on_glyphs_learns_in_its_lifetime(store):
    from evoplast.runs.evolve import run_evolution

    result = run_evolution(glyph_cfg("search.generations=60"), out=quiet)
    r = result.report
    assert r["accuracy"] > r["accuracy_plasticity_off"] + 0.3        # it learns in its lifetime
    assert r["accuracy"] > 0.5 and r["episode_gain"] > 0.3
    assert r["accuracy_plasticity_off"] < 0.4                        # labels are re-mapped: no free lunch


def test_evaluate_script_runs_protocol_baselines_and_analyses(store, tmp_path, capsys):
    code = scripts.run("evolve", [*GLYPHS, "search.generations=10", "task.output_classes=8",
                                   "finetune.after_evolution=false"])    # the evolved rule is evaluated
    evo_out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    run_id = evo_out.split("MLflow run ")[1].split(":")[0]
    code = scripts.run("evaluate", ["--run-id", run_id, "--oml-steps", "5", "--out", "ev"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    for line in ("evolved rule", "same genome, plasticity off", "online SGD of the plastic weights only, same init",
                 "online SGD of every weight and bias, same init", "prototypes (nearest class mean)", "feedback alignment",
                 "OML: meta-learned init", "Accuracy vs N", "N=4", "N=5", "Mean cosine", "Forgetting (evolved rule)"):
        assert line in out, line
    for f in ("forgetting.png", "cosine.png", "accuracy_vs_n.png", "loss_vs_tasks_seen.png", "evaluation.json"):
        assert (tmp_path / "ev" / f).is_file(), f
    client = MlflowClient(store)
    child = client.get_run(out.split("MLflow run ")[-1].split()[0])
    assert child.data.tags["mlflow.parentRunId"] == run_id and child.data.tags["outer"] == "evaluation"
    with open(client.download_artifacts(child.info.run_id, "evaluation.json", str(tmp_path))) as f:
        m = json.load(f)["report"]
    assert m["oml_meta_steps"] == 5 and 0 <= m["prototype_accuracy"] <= 1 and 0 <= m["sgd_plastic_weights_accuracy"] <= 1
    assert len(client.get_metric_history(child.info.run_id, "accuracy_vs_n/evolved rule")) == 2
