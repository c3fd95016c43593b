#!/usr/bin/env python
"""How BPTT's meta-gradient behaves as lifetimes grow: its norm vs the lifetime length T, full and truncated.

    python scripts/bench_gradnorm.py [--out docs/img/gradnorm_vs_T.png] [--seeds 3]

For the default model (configs/default.yaml: 11-40-40-1, hebb on the output layer) at the default rate
and at 4x and 16x it, and lifetimes of T = 100 ... 4,000 steps (10 sinusoids with 10 ... 400 mini-batches
of 8 each), the meta-gradient of the query loss at the default genome (and 7 genomes around it, std 0.1)
is computed over 4 episodes (query loss capped at 100: a diverged lifetime counts as capped, with no
gradient) by full BPTT and by truncated BPTT (one window per sinusoid). Printed per
(rate, T): the median gradient norm over genomes and seeds (finite, uncapped ones), the share of non-finite
gradients and of capped losses, and the
cosine between the full and the truncated gradient (how much truncation biases the direction). Where
gradients explode or turn chaotic as T grows (Metz et al. 2021), ES should have its regime.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from evoplast.config import load_config  # noqa: E402
from evoplast.genome import build_genome_spec  # noqa: E402
from evoplast.learners import PlasticLearner  # noqa: E402
from evoplast.trainers.bptt import meta_loss_backward  # noqa: E402
from evoplast.seeding import Purpose  # noqa: E402
from evoplast.tasks import make_task  # noqa: E402

LENGTHS = (10, 25, 50, 100, 200, 400)      # mini-batches per sinusoid: T = 10 x this
RATES = (1, 4, 16)                        # multiples of the default eta_scale


def gradients(rate: int, per_task: int, seed: int, window: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss [P], grad [P, D])`` at the default genome and 7 around it, on 4 episodes of ``seed``."""
    cfg = load_config(None, [f"task.batches_per_task={per_task}", f"rule.eta_scale={0.08 * rate}",
                             "evaluation.episodes=4"])
    task = make_task(cfg.task)
    spec = build_genome_spec(cfg, task.n_in, task.n_out, task.kind).with_evolved()
    g = torch.Generator().manual_seed(seed)
    center = spec.initial_vector()
    genomes = torch.cat([center[None], center + 0.1 * torch.randn(7, spec.dim, generator=g)])
    genomes.requires_grad_(True)
    episodes = task.episodes(seed, Purpose.FINETUNE, 0, 4, "cpu")
    loss = meta_loss_backward(PlasticLearner(spec.model), spec, genomes, episodes, window=window or 0,
                              cap=cfg.evaluation.loss_cap)
    return loss, genomes.grad.detach().clone()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default=None, help="PNG of the gradient norm vs T (e.g. docs/img/gradnorm_vs_T.png)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    print("rate   T      full |grad| (median)  non-finite  capped  truncated |grad|  cos(full, truncated)  loss   s")
    for rate in RATES:
        for per_task in LENGTHS:
            start = time.perf_counter()
            full_norms, trunc_norms, cosines, losses, bad, capped, total = [], [], [], [], 0, 0, 0
            for seed in range(args.seeds):
                loss, full = gradients(rate, per_task, seed, None)
                _, trunc = gradients(rate, per_task, seed, per_task)
                ok = torch.isfinite(full).all(-1) & torch.isfinite(trunc).all(-1)
                total += len(ok)
                bad += int((~ok).sum())
                capped += int((loss >= 100.0).sum())      # the loss cap: a lifetime that diverged, gradient 0
                ok &= loss < 100.0
                full_norms += full[ok].norm(dim=-1).tolist()
                trunc_norms += trunc[ok].norm(dim=-1).tolist()
                cosines += torch.nn.functional.cosine_similarity(full[ok], trunc[ok], dim=-1).tolist()
                losses += loss[ok].tolist()
            row = {"rate": rate, "T": 10 * per_task, "full": statistics.median(full_norms) if full_norms else float("nan"),
                   "bad": bad / total, "capped": capped / total, "trunc": statistics.median(trunc_norms) if trunc_norms else float("nan"),
                   "cos": statistics.median(cosines) if cosines else float("nan"),
                   "loss": statistics.median(losses) if losses else float("nan")}
            rows.append(row)
            print(f"{rate:>3}x  {row['T']:>5}  {row['full']:>20.4g}  {row['bad']:>9.0%}  {row['capped']:>6.0%}  {row['trunc']:>16.4g}  "
                  f"{row['cos']:>20.3f}  {row['loss']:>5.2f}  {time.perf_counter() - start:.0f}", flush=True)
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        for rate, colour in zip(RATES, ("tab:blue", "tab:orange", "tab:red")):
            sel = [r for r in rows if r["rate"] == rate]
            ax[0].plot([r["T"] for r in sel], [r["full"] for r in sel], "o-", color=colour, label=f"full BPTT, eta x{rate}")
            ax[0].plot([r["T"] for r in sel], [r["trunc"] for r in sel], "s--", color=colour,
                       label=f"truncated (one sinusoid), eta x{rate}")
            ax[1].plot([r["T"] for r in sel], [r["cos"] for r in sel], "o-", color=colour, label=f"eta x{rate}")
        ax[0].set(xscale="log", yscale="log", xlabel="lifetime steps T", ylabel="median meta-gradient norm")
        ax[1].set(xscale="log", xlabel="lifetime steps T", ylabel="cosine(full, truncated gradient)")
        ax[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.18), ncol=2)
        ax[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.18), ncol=3)
        fig.tight_layout()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out, dpi=120, bbox_inches="tight")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
