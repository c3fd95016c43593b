import torch


from evoplast.seeding import Purpose
from evoplast.tasks import SinusoidTask
from .conftest import small_config


def _task(*overrides):
    return SinusoidTask(small_config(list(overrides)).task)


def test_shapes_and_blocked_order():
    eps = _task().episodes(0, Purpose.TRAIN, 0, 3)
    assert eps.stream_x.shape == (3, 100, 8, 11) and eps.stream_y.shape == (3, 100, 8, 1)
    assert eps.query_x.shape == (3, 10, 32, 11) and eps.query_y.shape == (3, 10, 32, 1)
    # blocked: sinusoid j fills steps 10j..10j+9, and the one-hot input names it
    task_per_step = eps.stream_task[0, :, 0]
    assert torch.equal(task_per_step, torch.arange(10).repeat_interleave(10))
    assert torch.equal(eps.stream_x[..., :10].argmax(-1), eps.stream_task)
    assert eps.curve_steps == tuple(range(9, 100, 10))
    seen = eps.seen_mask()
    assert seen.shape == (3, 10, 10) and torch.equal(seen[0].sum(-1), torch.arange(1, 11))


def test_stream_and_query_are_the_same_sinusoids():
    """Fit a sin x + b cos x on each sinusoid's stream points; the query points lie on the same curve."""
    eps = _task("task.num_tasks=4").episodes(1, Purpose.TRAIN, 5, 2)
    for k in range(2):
        for j in range(4):
            sel = eps.stream_task[k] == j
            x = eps.stream_x[k][..., -1][sel]
            y = eps.stream_y[k][..., 0][sel]
            basis = torch.stack([torch.sin(x), torch.cos(x)], -1)
            coef = torch.linalg.lstsq(basis, y.unsqueeze(-1)).solution
            qx, qy = eps.query_x[k, j, :, -1], eps.query_y[k, j, :, 0]
            pred = (torch.stack([torch.sin(qx), torch.cos(qx)], -1) @ coef).squeeze(-1)
            torch.testing.assert_close(pred, qy, atol=1e-4, rtol=1e-4)
            assert 0.1 <= coef.norm().item() <= 5.0   # the amplitude is in range
            assert eps.query_x[k, j, 0, j] == 1.0      # query inputs carry the same one-hot


def test_iid_order_shuffles_points_across_sinusoids():
    eps = _task("task.order=iid").episodes(0, Purpose.TRAIN, 0, 1)
    tasks_in_first_batch = eps.stream_task[0, 0].unique().numel()
    assert tasks_in_first_batch > 1
    assert torch.equal(eps.stream_task[0].reshape(-1).bincount(), torch.full((10,), 80))


def test_episodes_are_derived_from_seed_generation_and_index():
    task = _task()
    a = task.episodes(7, Purpose.TRAIN, 3, 4)
    b = task.episodes(7, Purpose.TRAIN, 3, 2)       # fewer episodes: the first two are the same
    c = task.episodes(7, Purpose.TRAIN, 4, 2)       # another generation
    d = task.episodes(7, Purpose.HELDOUT, 3, 2)     # another purpose
    assert torch.equal(a.stream_x[:2], b.stream_x) and torch.equal(a.query_y[:2], b.query_y)
    assert not torch.equal(b.stream_y, c.stream_y) and not torch.equal(b.stream_y, d.stream_y)
    assert not torch.equal(a.stream_y[0], a.stream_y[1])
