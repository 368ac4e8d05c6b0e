"""imgclf robustness: accuracy under corruptions and attacks."""

from __future__ import annotations

import argparse
from pathlib import Path

from imgclf.commands.common import Parents, names, number_list, positive, score_on


def add_parser(commands: argparse._SubParsersAction, parents: Parents) -> None:
    """imgclf robustness RUN."""
    robust = commands.add_parser("robustness", parents=[parents.scored_on],
                                 help="accuracy under corruptions at 5 severities and under FGSM/PGD attacks")
    robust.add_argument("run_dir", type=Path, metavar="RUN", help="a run directory (exported file: corruptions only)")
    robust.add_argument("--corruptions", default="all", help="all (default), none, or a comma list such as "
                                                             "gaussian_noise,rotation (a wrong name lists them all)")
    robust.add_argument("--attacks", default="all", help="all (fgsm and pgd, the default), fgsm, pgd or none")
    robust.add_argument("--eps", type=number_list, default=(0.05, 0.1, 0.2, 0.3),
                        help="L-inf budgets in [0, 1] pixel units (default 0.05,0.1,0.2,0.3)")
    robust.add_argument("--steps", type=positive, default=40, help="PGD steps (default 40)")
    robust.add_argument("--step-size", type=float, help="PGD step size (default 2.5 x eps / steps)")
    robust.add_argument("--no-random-start", dest="random_start", action="store_false",
                        help="start PGD at the image instead of a random point of the eps ball")
    robust.add_argument("--limit", type=positive, default=2000,
                        help="score a seeded random sample of this many images (default 2000)")
    robust.add_argument("--all-images", dest="limit", action="store_const", const=None, help="score every image")
    robust.add_argument("--seed", type=int, default=0, help="seed of the sample, corruptions and PGD starts")
    robust.add_argument("--batch-size", type=positive, default=500, help="images per pass (default 500)")
    robust.add_argument("--out", type=Path, help="folder for robustness.json and .html (default: the run)")
    robust.set_defaults(run=_robustness)


def _robustness(args: argparse.Namespace) -> None:
    from imgclf.attacks import ATTACKS
    from imgclf.robustness import CORRUPTIONS, SEVERITIES, robustness

    r, html = robustness(args.run_dir, corruptions=names(args.corruptions, list(CORRUPTIONS)),
                         attack_names=tuple(names(args.attacks, ATTACKS)), eps=args.eps, steps=args.steps,
                         step_size=args.step_size, random_start=args.random_start, limit=args.limit, seed=args.seed,
                         batch_size=args.batch_size, on=score_on(args), out=args.out, progress=not args.quiet)
    print(f"{r.model} on {r.images:,} {r.dataset} {r.split} images: clean accuracy {r.clean_accuracy:.4f}")
    if r.corruptions:
        print(f"{'corruption':<16}" + "".join(f"{f'sev {s}':>8}" for s in range(1, SEVERITIES + 1)) + f"{'mean':>8}")
        for name, c in r.corruptions.items():
            print(f"{name:<16}" + "".join(f"{a:>8.4f}" for a in c.accuracy) + f"{c.mean_accuracy:>8.4f}")
        drop = r.relative_degradation
        print(f"mean corruption accuracy {r.mean_corruption_accuracy:.4f} (relative degradation "
              + ("n/a: clean accuracy is 0)" if drop is None else f"{drop:.1%})"))
    for name, accs in r.attacks.items():
        print(f"{name} accuracy: " + ", ".join(f"eps {e}: {v:.4f}" for e, v in accs.items()))
    print(f"report: {html} (numbers in {html.with_suffix('.json')})")
