"""Class-incremental classification (the Omniglot protocol of OML / ANML / FLP).

An episode draws N classes (``task.num_tasks``) from the meta-train classes (evolution, fine-tuning,
validation) or the meta-test classes (held-out reports), gives them fresh labels (N distinct output units
out of ``task.output_classes``, at random, so every output unit plays every role), and presents k shots of each (``task.batches_per_task`` steps of ``task.batch_size`` images),
class after class (``blocked``) or shuffled (``iid``). The query holds ``task.query_size`` other images
of each class: no query image is ever in the stream. Inputs are flattened pixels in [0, 1]. Task i (the
row of the query and of the forgetting matrix) is the i-th class presented; its label is random.
"""

from __future__ import annotations

import torch

from ..config import TaskConfig
from ..seeding import Purpose, generator
from .episodes import Episodes
from .images import load_images


class ClassificationTask:
    kind = "classification"

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg
        self.images = load_images(cfg)
        self.n_in = self.images.size ** 2
        self.n_out = cfg.output_classes or cfg.num_tasks
        per_class = self.images.train.shape[1]
        need = cfg.batches_per_task * cfg.batch_size + cfg.query_size
        if need > per_class:
            from ..config import ConfigError

            raise ConfigError(f"task: {cfg.batches_per_task} x {cfg.batch_size} shots + {cfg.query_size} query images "
                              f"per class need {need} images, {self.images.name} has {per_class} per class; lower "
                              f"task.batches_per_task, task.batch_size or task.query_size")
        for split, pool in (("meta-train", self.images.train), ("meta-test", self.images.test)):
            if cfg.num_tasks > pool.shape[0]:
                from ..config import ConfigError

                raise ConfigError(f"task.num_tasks={cfg.num_tasks}: {self.images.name} has only {pool.shape[0]} "
                                  f"{split} classes")

    def episodes(self, seed: int, purpose: Purpose, index: int, num_episodes: int,
                 device: torch.device | str = "cpu", order: str | None = None) -> Episodes:
        """``num_episodes`` episodes from ``(seed, purpose, index, k)``; meta-test classes for HELDOUT."""
        pool = self.images.test if purpose == Purpose.HELDOUT else self.images.train
        parts = [self._episode(pool, generator(seed, purpose, index, k), order or self.cfg.order)
                 for k in range(num_episodes)]
        stacked = [torch.stack(p) for p in zip(*parts)]
        c = self.cfg
        curve_steps = tuple((j + 1) * c.batches_per_task - 1 for j in range(c.num_tasks))
        return Episodes(*stacked, curve_steps=curve_steps, kind="classification").to(device)

    def _episode(self, pool: torch.Tensor, gen: torch.Generator, order: str):
        c = self.cfg
        n, shots, q, m = c.num_tasks, c.batches_per_task * c.batch_size, c.query_size, c.batch_size
        classes = torch.randperm(pool.shape[0], generator=gen)[:n]                       # [n] classes, presentation order
        labels = torch.randperm(self.n_out, generator=gen)[:n]                          # class i is called labels[i]
        picks = torch.stack([torch.randperm(pool.shape[1], generator=gen)[:shots + q] for _ in range(n)])
        images = pool[classes.unsqueeze(1), picks].reshape(n, shots + q, -1)            # [n, shots+q, pixels]
        stream, query = images[:, :shots], images[:, shots:]                           # disjoint drawings
        # task i = the i-th class presented (rows of the query and of the forgetting matrix); its label is labels[i]
        stream_task = torch.arange(n).unsqueeze(1).expand(n, shots).reshape(-1)        # [n*shots], class-major
        stream = stream.reshape(n * shots, -1)
        if order == "iid":
            perm = torch.randperm(n * shots, generator=gen)
            stream, stream_task = stream[perm], stream_task[perm]
        steps = n * shots // m
        query_y = labels.unsqueeze(1).expand(n, q)
        return (stream.reshape(steps, m, -1), labels[stream_task].reshape(steps, m), stream_task.reshape(steps, m),
                query, query_y)
