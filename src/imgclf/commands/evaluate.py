"""imgclf evaluate and imgclf compare: score runs on their test images."""

from __future__ import annotations

import argparse
from pathlib import Path

from imgclf.commands.common import Parents, score_on


def add_parser(commands: argparse._SubParsersAction, parents: Parents) -> None:
    """imgclf evaluate RUN and imgclf compare RUN RUN..."""
    evaluate = commands.add_parser("evaluate", parents=[parents.scoring],
                                   help="metrics, plots and an HTML report of a run")
    evaluate.add_argument("run_dir", type=Path, metavar="RUN", help="a run directory or an exported model file")
    evaluate.add_argument("--calibrate", action="store_true",
                          help="fit temperature scaling on the run's validation split and save it with the model")
    evaluate.add_argument("--fit-unknown", action="store_true",
                          help="fit unknown-input detection on the run's training and validation images and save "
                               "it with the model (runs trained now have it already)")
    evaluate.add_argument("--ood", action="append", default=[], metavar="folder:PATH",
                          help="images of none of the classes (a folder, any layout, or a dataset name): how well "
                               "the unknown scores tell them apart (AUROC, FPR at 95%% TPR); repeatable")
    evaluate.add_argument("--unknown-rate", type=float, metavar="SHARE",
                          help="answer unknown for this share of validation images (default: as fitted, 0.05)")
    evaluate.add_argument("--out", type=Path, help="folder for report.json and report.html (default: the run)")
    evaluate.set_defaults(run=_evaluate)
    compare = commands.add_parser("compare", parents=[parents.scoring],
                                  help="leaderboard of runs on the same test images, with significance tests")
    compare.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="two or more run directories")
    compare.add_argument("--out", type=Path, help="folder for compare.json and compare.html "
                                                  "(default: the folder holding the first run)")
    compare.set_defaults(run=_compare)


def _evaluate(args: argparse.Namespace) -> None:
    from imgclf.evaluate.evaluation import evaluate_run
    from imgclf.evaluate.stats import format_interval

    r, html = evaluate_run(args.run_dir, score_on(args), calibrate=args.calibrate, resamples=args.resamples,
                           seed=args.seed, latency_runs=args.latency_runs, out=args.out, progress=not args.quiet,
                           tta=args.tta, fit_unknown_inputs=args.fit_unknown, ood=tuple(args.ood),
                           unknown_rate=args.unknown_rate)
    ci, eff, temp, fair = r.confidence_intervals, r.efficiency, r.temperature, r.fairness
    print(f"{r.model} on {r.dataset} {r.split} ({r.samples:,} images)")
    print(f"accuracy   {format_interval(r.accuracy, ci['accuracy'])} 95% bootstrap CI")
    print(f"macro F1   {format_interval(r.macro['f1'], ci['macro_f1'])}")
    print(f"top-{r.top_k['k']}      {r.top_k['accuracy']:.4f}   log loss {r.log_loss:.4f}   ROC AUC macro "
          + ("n/a" if r.macro_auc is None else f"{r.macro_auc:.4f}"))
    print(f"ECE        {temp['ece_uncalibrated']:.4f} uncalibrated, {r.calibration['ece']:.4f} at temperature "
          f"{temp['value']:.3f}" + (" (fitted now, saved into model.json)" if args.calibrate else ""))
    print(f"worst class {fair['worst_class']} at {fair['worst_accuracy']:.4f} (gap to best {fair['gap']:.4f}); "
          "most confused: " + (", ".join(f"{p['true']}->{p['predicted']} ({p['count']})"
                                        for p in r.most_confused[:3]) or "none"))
    lat = eff["latency_ms"]
    print(f"latency at batch 1 p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms; "
          f"{eff['throughput']['images_per_second']:,.0f} images/s at batch {eff['throughput']['batch']} "
          f"({eff['device']}, {eff['threads']} threads)")
    print(f"params {eff['params']:,}, FLOPs {eff['flops'] / 1e6:,.2f} M per image")
    if r.unknown:
        u = r.unknown
        print(f"unknown    {u['rejected']:.2%} of these images rejected ({u['method']} score > {u['threshold']:.4g}, "
              f"{u['rate']:.0%} of validation); accuracy on the rest {u['accepted_accuracy'] or 0:.4f}")
        for o in u["ood"]:
            print(f"  vs {o['source']} ({o['images']:,} images): rejected {o['rejected']:.2%}; AUROC / FPR@95%TPR "
                  + ", ".join(f"{m} {o[m]['auroc']:.4f} / {o[m]['fpr95']:.4f}" for m in o if isinstance(o[m], dict)))
        if u["warning"]:
            print(f"warning: {u['warning']}")
    for note in r.notes:
        print(f"note: {note}")
    print(f"report: {html} (numbers in {html.with_suffix('.json')})")


def _compare(args: argparse.Namespace) -> None:
    from imgclf.evaluate.compare import compare_runs
    from imgclf.evaluate.stats import format_interval, format_p

    result, html = compare_runs(args.runs, score_on(args), resamples=args.resamples, seed=args.seed,
                                latency_runs=args.latency_runs, out=args.out, progress=not args.quiet, tta=args.tta)
    board = result.leaderboard
    width = max(len("run"), *(len(e.name) for e in board))
    print(f"{result.dataset} {result.split}, {result.samples:,} images, 95% bootstrap CIs")
    print(f"{'run':<{width}}  {'accuracy [95% CI]':<26}{'macro F1':>9}{'params':>12}{'p50 ms':>9}  McNemar p vs best")
    for e in board:
        versus = "best" if e.vs_best is None else format_p(e.vs_best["p_value"])
        print(f"{e.name:<{width}}  {format_interval(e.accuracy, e.ci['accuracy'])}  {e.macro_f1:>9.4f}"
              f"{e.params:>12,}{e.latency_ms['p50']:>9.2f}  {versus}")
    for p in result.published:
        print(f"published: {p['model']} {p['accuracy']:.4f} ({p['source'].split(',')[0]} et al.)")
    print(f"report: {html} (numbers in {html.with_suffix('.json')})")
