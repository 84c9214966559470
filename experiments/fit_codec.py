"""Fit ISTR's PCA mask codec on the training masks of any COCO-format dataset.

    maskbench fit-codec --config DATA.yaml --components 60 --mask-size 28 --out codec.pt [--report]

DATA.yaml is a data config (`data: {root: ..., ...}`, as experiments/configs/data/*.yaml; a quickstart config works
too, only its `data` block is read). Every non-crowd training mask is cropped to its box, resized to M x M,
softened into logits and streamed into an exact float64 covariance (memory: one (M*M)^2 matrix); a whitened,
class-agnostic PCA of it is saved atomically with K, M and the dataset it came from. Give the file to the model as
`model.init_args.codec_path`.

--report also scores the codec on the val masks: mean mask IoU after encode -> decode -> threshold for each K in
--report-components (default 8 16 32 60 128), next to the share of training variance those K components explain;
the table is printed and written as OUT.report.md, the curve as OUT.report.png.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from datamodules.files import atomic_path, write_text_atomic

DEFAULT_REPORT_COMPONENTS = [8, 16, 32, 60, 128]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", required=True, metavar="DATA.yaml",
                        help="data config with a `data:` block; repeat to merge several (later ones win)")
    parser.add_argument("--root", default=None, help="dataset root, overriding data.root")
    parser.add_argument("--components", type=int, default=60, help="K, the embedding size (official: 60)")
    parser.add_argument("--mask-size", type=int, default=28, help="M, the box-mask side (official: 28)")
    parser.add_argument("--out", required=True, help="codec file to write (.pt)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the soft-logit noise")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="DataLoader workers decoding masks (default: the data config's num_workers)")
    parser.add_argument("--report", action="store_true", help="also score reconstruction on the val masks")
    parser.add_argument("--report-components", type=int, nargs="+", default=DEFAULT_REPORT_COMPONENTS, metavar="K",
                        help="the K values --report scores")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from models.istr.mask_codec import CodecError

    try:
        return _run(args)
    except CodecError as error:
        return _fail(str(error))


def _run(args: argparse.Namespace) -> int:
    from models.istr.codec_data import box_mask_batches
    from models.istr.mask_codec import PCAMaskCodec, fit_pca

    mask_size, components = args.mask_size, args.components
    dim = mask_size * mask_size
    if mask_size < 2:
        return _fail(f"--mask-size must be >= 2, got {mask_size}")
    if not 1 <= components <= dim:
        return _fail(f"--components must be in [1, {dim}] for {mask_size}x{mask_size} masks, got {components}")
    datamodule = build_datamodule(args.config, args.root)
    workers = args.num_workers if args.num_workers is not None else int(datamodule.hparams.num_workers)
    image_dir, ann_file = datamodule.split_paths("train")

    fit = fit_pca(box_mask_batches(image_dir, ann_file, mask_size, workers, progress=not args.no_progress,
                                   description="fitting the codec on the train masks"), mask_size, args.seed)
    source = {"ann_file": str(Path(ann_file).resolve()), "image_dir": str(Path(image_dir).resolve()),
              "seed": args.seed}
    codec = PCAMaskCodec.from_fit(fit, components, mask_size, source)
    codec.save(args.out)
    explained = 100 * float(codec.explained_variance_ratio.sum())
    print(f"wrote {args.out}: K={components}, {mask_size}x{mask_size} masks, fitted on {fit.count} masks of "
          f"{ann_file}; explains {explained:.1f}% of the variance (largest eigenvalue "
          f"{float(fit.explained_variance[0]):.1f})")

    if args.report:
        return write_report(args, fit, datamodule, workers, source)
    return 0


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def build_datamodule(config_paths: list[str], root: str | None):
    """CocoDataModule from the `data` blocks of the YAML files (merged in order) and an optional root override."""
    import yaml

    from datamodules.coco import CocoDataModule, DatasetError

    data: dict = {}
    for path in config_paths:
        try:
            with open(path) as f:
                config = yaml.safe_load(f)
        except OSError as error:
            raise DatasetError(f"{path}: cannot read the data config ({error.strerror})") from None
        except yaml.YAMLError as error:
            raise DatasetError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
        if not isinstance(config, dict) or not isinstance(config.get("data"), dict):
            raise DatasetError(f"{path}: no `data:` block (expected `data: {{root: ..., ...}}`)")
        block = config["data"]
        if "init_args" in block:  # LightningCLI's long form: data: {class_path: ..., init_args: {...}}
            block = block["init_args"] or {}
        data.update({key: value for key, value in block.items() if key != "class_path"})
    if root is not None:
        data["root"] = root
    try:
        return CocoDataModule(**data)
    except TypeError as error:
        raise DatasetError(f"{', '.join(config_paths)}: bad `data` block: {error}") from None


def write_report(args: argparse.Namespace, fit, datamodule, workers: int, source: dict) -> int:
    from models.istr.codec_data import box_mask_batches
    from models.istr.mask_codec import PCAMaskCodec, reconstruction_iou

    dim = args.mask_size**2
    # Components beyond the data's rank have no variance to whiten by: a K there is not a codec.
    rank = fit.rank
    wanted = sorted(set(args.report_components))
    usable = [k for k in wanted if 1 <= k <= min(dim, rank)]
    skipped = [k for k in wanted if k not in usable]
    if not usable:
        return _fail(f"none of --report-components {wanted} is within 1..{min(dim, rank)}")
    largest = PCAMaskCodec.from_fit(fit, max(usable), args.mask_size, source)
    image_dir, ann_file = datamodule.split_paths("val")
    ious, num_val = reconstruction_iou(
        largest,
        box_mask_batches(image_dir, ann_file, args.mask_size, workers, progress=not args.no_progress,
                         description="scoring reconstruction on the val masks"),
        usable,
        seed=args.seed,
    )
    ratios = {k: 100 * float(fit.explained_variance[:k].sum() / fit.total_variance) for k in usable}

    lines = [
        f"# ISTR PCA mask codec: reconstruction quality ({args.mask_size}x{args.mask_size} masks)",
        "",
        f"- fitted on {fit.count} train masks of `{source['ann_file']}`",
        f"- scored on {num_val} val masks of `{Path(ann_file).resolve()}` (encode -> decode -> threshold 0.5)",
        "",
        "| K | explained variance (train) | mean mask IoU (val) |",
        "|---:|---:|---:|",
    ]
    lines += [f"| {k} | {ratios[k]:.1f}% | {ious[k]:.4f} |" for k in usable]
    if skipped:
        lines += ["", f"Not scored (outside 1..{min(dim, rank)}, the rank of the training masks): {skipped}"]
    table = "\n".join(lines) + "\n"
    stem = Path(args.out)
    markdown, figure = stem.with_suffix(".report.md"), stem.with_suffix(".report.png")
    write_text_atomic(markdown, table)
    _plot(usable, ious, ratios, figure, args.mask_size)
    print(table)
    print(f"wrote {markdown} and {figure}")
    return 0


def _plot(components: list[int], ious: dict[int, float], ratios: dict[int, float], path: Path, mask_size: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    axis.plot(components, [ious[k] for k in components], "o-", label="mean mask IoU (val)")
    axis.plot(components, [ratios[k] / 100 for k in components], "s--", label="explained variance (train)")
    axis.set_xscale("log", base=2)
    axis.set_xticks(components, [str(k) for k in components])
    axis.set_xlabel("PCA components K")
    axis.set_ylim(0, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right")
    axis.set_title(f"ISTR mask codec, {mask_size}x{mask_size} masks")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)

