"""Image classes for class-incremental classification: procedural glyphs, scikit-learn's digits, Omniglot.

Each source gives an :class:`ImageSet`: images grouped by class, split into meta-train classes
(``train``: evolution, fine-tuning, validation) and meta-test classes (``test``: held-out reports).
Images are ``float32`` in [0, 1] (ink = 1), resized to ``size x size``. Loaded sets are cached per
process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import WorldError


class DatasetError(WorldError):
    """A dataset that is missing or malformed; the message says what was expected and how to get it."""


@dataclass(frozen=True)
class ImageSet:
    """``train [C_train, n, size, size]`` and ``test [C_test, n, size, size]``: n images of each class."""

    name: str
    train: Tensor
    test: Tensor
    note: str = ""

    @property
    def size(self) -> int:
        return self.train.shape[-1]


def _resize(images: Tensor, size: int) -> Tensor:
    """``[..., H, W] -> [..., size, size]`` by area averaging (or bilinear when enlarging)."""
    lead = images.shape[:-2]
    flat = images.reshape(-1, 1, *images.shape[-2:]).float()
    mode = "area" if images.shape[-1] >= size else "bilinear"
    out = F.interpolate(flat, size=(size, size), mode=mode, **({} if mode == "area" else {"align_corners": False}))
    return out.reshape(*lead, size, size).clamp(0, 1)


# --------------------------------------------------------------------------------------------------
# Procedural glyphs: stroke-drawn characters, deterministic from a seed


def _render(segments: Tensor, size: int, width: float) -> Tensor:
    """Rasterise line segments ``[n, S, 2, 2]`` (endpoints in [0, 1]^2) into ``[n, size, size]``."""
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    grid = torch.stack(torch.meshgrid(coords, coords, indexing="ij"), -1).reshape(1, -1, 1, 2)  # [1, HW, 1, 2]
    a, b = segments[:, None, :, 0], segments[:, None, :, 1]                                      # [n, 1, S, 2]
    ab = b - a
    t = (((grid - a) * ab).sum(-1) / ab.square().sum(-1).clamp(min=1e-8)).clamp(0, 1)         # [n, HW, S]
    nearest = a + t.unsqueeze(-1) * ab
    dist = (grid - nearest).norm(dim=-1).min(dim=-1).values                                     # [n, HW]
    return (1.0 - (dist / width).square()).clamp(min=0).reshape(-1, size, size)


def _glyph_class(gen: torch.Generator, n: int, size: int) -> Tensor:
    """n drawings ``[n, size, size]`` of one class: 1-3 strokes through random control points, each
    drawing with its own small affine jitter and control-point noise."""
    strokes = int(torch.randint(1, 4, (1,), generator=gen))
    points = int(torch.randint(3, 5, (1,), generator=gen))
    ctrl = 0.15 + 0.7 * torch.rand(strokes, points, 2, generator=gen)                   # [S, p, 2]
    angle = (torch.rand(n, generator=gen) - 0.5) * 0.35                                   # about +-10 degrees
    scale = 0.9 + 0.2 * torch.rand(n, generator=gen)
    shift = (torch.rand(n, 1, 1, 2, generator=gen) - 0.5) * 0.1
    rot = torch.stack([torch.stack([angle.cos(), -angle.sin()], -1), torch.stack([angle.sin(), angle.cos()], -1)], -2)
    pts = ctrl.unsqueeze(0) + 0.02 * torch.randn(n, strokes, points, 2, generator=gen)  # [n, S, p, 2]
    pts = ((pts - 0.5) @ (rot * scale.view(n, 1, 1)).transpose(-1, -2).unsqueeze(1)) + 0.5 + shift
    segments = torch.stack([pts[:, :, :-1], pts[:, :, 1:]], dim=3)                        # [n, S, p-1, 2, 2]
    return _render(segments.reshape(n, -1, 2, 2), size, width=0.07)


@lru_cache(maxsize=4)
def glyphs(num_classes: int = 600, per_class: int = 20, size: int = 28, seed: int = 0) -> ImageSet:
    """``num_classes`` procedural character classes (the last 20% are meta-test classes)."""
    images = []
    for c in range(num_classes):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + c)
        images.append(_glyph_class(gen, per_class, size))
    images = torch.stack(images)
    split = int(round(num_classes * 0.8))
    return ImageSet("glyphs", images[:split], images[split:])


# --------------------------------------------------------------------------------------------------
# scikit-learn's digits: real handwriting that ships with scikit-learn


@lru_cache(maxsize=4)
def digits(size: int = 8) -> ImageSet:
    """The 1,797 8x8 digits. With 10 classes there are too few for class-disjoint meta-testing: both
    splits hold all 10 digits, with disjoint images (the first half of each class for meta-training)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32) / 16.0
    labels = torch.tensor(data.target)
    per_class = int(labels.bincount().min())
    grouped = torch.stack([images[labels == c][:per_class] for c in range(10)])           # [10, n, 8, 8]
    grouped = _resize(grouped, size) if size != 8 else grouped
    half = per_class // 2
    return ImageSet("digits", grouped[:, :half], grouped[:, half:2 * half],
                    note="meta-train and meta-test share the 10 classes, not the images")


# --------------------------------------------------------------------------------------------------
# Omniglot, read from the directory layout it is distributed in

OMNIGLOT_HELP = ("download images_background.zip and images_evaluation.zip from "
                 "https://github.com/brendenlake/omniglot (folder python/) and unzip both into task.data_dir")


def _omniglot_split(root: Path, split: str, size: int) -> Tensor:
    from PIL import Image

    folder = root / split
    if not folder.is_dir():
        raise DatasetError(f"Omniglot: {str(folder)!r} does not exist (expected {split}/<alphabet>/<character>/"
                           f"<drawing>.png under task.data_dir={str(root)!r}); {OMNIGLOT_HELP}")
    characters = sorted(c for a in sorted(folder.iterdir()) if a.is_dir() for c in sorted(a.iterdir()) if c.is_dir())
    if not characters:
        raise DatasetError(f"Omniglot: {str(folder)!r} holds no <alphabet>/<character>/ folders; {OMNIGLOT_HELP}")
    per_class = None
    classes = []
    for char in characters:
        files = sorted(char.glob("*.png"))
        if per_class is None:
            per_class = len(files)
        if len(files) < 2 or len(files) != per_class:
            raise DatasetError(f"Omniglot: {str(char)!r} holds {len(files)} PNG drawings, expected {per_class} like "
                               f"the other characters (at least 2); {OMNIGLOT_HELP}")
        drawings = []
        for f in files:
            try:
                with Image.open(f) as im:
                    drawings.append(torch.tensor(list(im.convert("L").getdata()), dtype=torch.float32)
                                    .reshape(im.size[1], im.size[0]))
            except OSError as exc:
                raise DatasetError(f"Omniglot: cannot read {str(f)!r} ({exc}); {OMNIGLOT_HELP}") from None
        stack = torch.stack([1.0 - d / 255.0 for d in drawings])                          # ink = 1
        classes.append(_resize(stack, size))
    return torch.stack(classes)


@lru_cache(maxsize=2)
def omniglot(data_dir: str, size: int = 28) -> ImageSet:
    """Background alphabets for meta-training, evaluation alphabets for meta-testing."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DatasetError(f"Omniglot: task.data_dir={data_dir!r} is not a directory; {OMNIGLOT_HELP}")
    return ImageSet("omniglot", _omniglot_split(root, "images_background", size),
                    _omniglot_split(root, "images_evaluation", size))


def load_images(task_cfg) -> ImageSet:
    """The :class:`ImageSet` of a classification task config."""
    if task_cfg.name == "glyphs":
        return glyphs(task_cfg.glyph_classes, task_cfg.images_per_class, task_cfg.image_size)
    if task_cfg.name == "digits":
        return digits(task_cfg.image_size)
    if task_cfg.name == "omniglot":
        return omniglot(task_cfg.data_dir, task_cfg.image_size)
    raise ValueError(f"not an image task: {task_cfg.name!r}")


def pixels(size: int) -> int:
    return int(math.prod((size, size)))
