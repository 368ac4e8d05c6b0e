"""imgclf export and imgclf benchmark: the model in other formats."""

from __future__ import annotations

import argparse
from pathlib import Path

from imgclf.commands.common import MOVED, Parents, positive
from imgclf.errors import ImgclfError


def add_parser(commands: argparse._SubParsersAction, parents: Parents) -> None:
    """imgclf export RUN and imgclf benchmark RUN."""
    export = commands.add_parser("export", parents=[parents.logs],
                                 help="ONNX (optionally int8) or TorchScript, parity-checked")
    export.add_argument("run_dir", type=Path, metavar="RUN", help="a run directory")
    export.add_argument("--format", default="onnx", help="onnx or torchscript (default onnx)")
    export.add_argument("--quantize", choices=["int8", "int8-dynamic"],
                        help="ONNX int8: static (calibrated on 512 training images) or dynamic")
    export.add_argument("--opset", type=positive, default=18, help="ONNX opset (default 18, the oldest supported)")
    export.add_argument("--embed-normalization", action="store_true",
                        help="normalize inside the model: the input is the resized image scaled to [0, 1]")
    export.add_argument("--data-dir", help=MOVED + "; read for the parity check")
    export.add_argument("--out", type=Path, help="folder for the exported file (default: the run)")
    export.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest probability difference to PyTorch accepted (default 1e-4)")
    export.add_argument("--max-drop", type=float, default=0.01, metavar="FRACTION",
                        help="int8: largest test accuracy it may lose against fp32 (default 0.01, one point)")
    export.set_defaults(run=_export)

    bench = commands.add_parser("benchmark", parents=[parents.logs],
                                help="the model in every format: size, accuracy, latency, throughput, share of peak")
    bench.add_argument("run_dir", type=Path, metavar="RUN", help="a run directory")
    bench.add_argument("--data-dir", help=MOVED)
    bench.add_argument("--runs", type=positive, default=100, help="timed single-image passes (default 100)")
    bench.add_argument("--batch", type=positive, default=256, help="batch size for throughput (default 256)")
    bench.add_argument("--tolerance", type=float, default=1e-4,
                       help="largest probability difference of an export to PyTorch accepted (default 1e-4)")
    bench.add_argument("--max-drop", type=float, default=0.01, metavar="FRACTION",
                       help="largest test accuracy int8 may lose against fp32 (default 0.01, one point)")
    bench.set_defaults(run=_benchmark)


def _export(args: argparse.Namespace) -> None:
    from imgclf.export import export_run

    info, path = export_run(args.run_dir, args.format, quantize=args.quantize, opset=args.opset,
                            embed_normalization=args.embed_normalization,
                            out=args.out, data_dir=args.data_dir, tolerance=args.tolerance,
                            max_drop=args.max_drop)
    parity = info["parity"]
    print(f"wrote {path} ({path.stat().st_size / 2**20:.2f} MiB) and {path.name}.json")
    print(f"parity with PyTorch on {parity['images']} test images: max |p - p_torch| {parity['max_abs_diff']:.2e}, "
          f"top-1 agreement {parity['top1_agreement']:.4f}")
    if "int8" in info:
        q = info["int8"]
        print(f"int8 vs fp32 (onnxruntime, whole test split): accuracy {q['fp32']['accuracy']:.4f} -> "
              f"{q['int8']['accuracy']:.4f} ({q['accuracy_change'] * 100:+.2f} points), size {q['fp32']['mb']:.2f} -> "
              f"{q['int8']['mb']:.2f} MiB, {q['fp32']['images_per_second']:,.0f} -> "
              f"{q['int8']['images_per_second']:,.0f} images/s at batch 256")
    print(f"use it: imgclf predict {path} IMAGE, imgclf evaluate {path}")


def _benchmark(args: argparse.Namespace) -> None:
    from imgclf.benchmark import benchmark_formats

    result = benchmark_formats(args.run_dir, data_dir=args.data_dir, runs=args.runs, batch=args.batch,
                               tolerance=args.tolerance, max_drop=args.max_drop)
    beaten = "" if result["peak_from"] == "matmul" else (
        f" ({result['peak_from']} ran faster, {result['peak_gflops']:,.1f} GFLOP/s: that is the peak here)")
    print(f"{result['model']} from {result['run']}: {result['flops_per_image'] / 1e6:,.2f} MFLOPs per image; "
          f"{result['images']:,} test images; {result['threads']} threads; measured float32 matmul peak "
          f"{result['matmul_gflops']:,.1f} GFLOP/s{beaten}")
    throughput = f"img/s @{result['batch']}"
    print(f"{'format':<24}{'MiB':>8}{'accuracy':>10}{'p50 ms':>9}{'p99 ms':>9}{throughput:>12}{'vs eager':>10}"
          f"{'of peak':>9}")
    for r in result["rows"]:
        if r["failed"]:
            print(f"{r['format']:<24}FAILED: {r['failed']}")
            continue
        share = "n/a" if r["peak_fraction"] is None else f"{r['peak_fraction']:.1%}"
        print(f"{r['format']:<24}{r['file_mb']:>8.3f}{r['accuracy']:>10.4f}{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}"
              f"{r['images_per_second']:>12,.0f}{r['speedup']:>9.2f}x{share:>9}")
    print("of peak: FLOPs per image (2 per multiply-add, as the matmul is counted) x img/s over that peak; "
          "int8 runs integer arithmetic, whose peak is another, so it has none")
    if result["failed"]:
        raise ImgclfError(f"{len(result['failed'])} of {len(result['rows'])} formats failed "
                          f"({', '.join(result['failed'])}); the reasons are in the table above.")
