"""Speed of models given by their configs: FPS end to end and model only, latency, stages, memory, params, FLOPs.

    maskbench bench --config MODEL.yaml [--config B.yaml ...] [--ckpt_path C.ckpt ...] [--device cpu|cuda]
                    [--precision 32|16-mixed|bf16-mixed] [--half-weights] [--tf32 | --no-tf32]
                    [--batch-size 1] [--warmup 10] [--iters 100] [--channels-last]
                    [--compile] [--compile-mode reduce-overhead|max-autotune|...] [--cudnn-benchmark] [--images 100] [--flops-images 5] [--breakdown-iters N]
                    [--no-breakdown] [--data-config DATA.yaml] [--set KEY=VALUE ...] [--random-weights]
                    [--out FILE.json]

Each --config is a model config as `maskbench fit` reads it (model: class_path/init_args, data: ...), or several
YAML files of one model joined by commas (A.yaml,overrides.yaml: later files win), built the same way (Lightning's
CLI, data.num_classes linked into the model); --ckpt_path (once per config, in the same order) loads trained
weights into it. The inputs are the first --images val images of each config's dataset.
--data-config adds a data config to every model (e.g. experiments/configs/data/coco2017.yaml); --set passes
a Lightning CLI override to every model, e.g. --set model.init_args.pretrained=false
--set model.init_args.pretrained_path=null to build paper configs without their ImageNet weights, which do not
change the speed (the VoVNet configs name a weights file, and a file with pretrained=false is an error).
--random-weights does that for every model and also sets the box regressors whose random initialisation gives boxes
without area (benchmarks/random_weights.py), so a random model makes a trained one's number of detections and its
per-detection work (mask pasting) is timed: the way to time paper configs without checkpoints.

Several --config run alternately (A B A B ... call by call, in one process) and the table adds each one's ratios
to the first. --out writes the JSON (one record for one config; {"runs", "ratios", "environment"} for several).
A model that needs a fitted mask codec (ISTR's PCA) and whose config names no codec file gets one of the config's
shape fitted on its dataset's training split and cached (`prepare_codec`); each record says which (`codec`).
A progress bar on stderr counts the model calls.
The protocol is benchmarks/speed.py's.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


# --random-weights: the paper configs built without their ImageNet weights (--set, before the user's own).
RANDOM_WEIGHT_OVERRIDES = ["model.init_args.pretrained=false", "model.init_args.pretrained_path=null"]


class BenchError(ValueError):
    """Bad bench input (an override, a checkpoint): printed as one `error:` line, exit status 2."""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", required=True, metavar="MODEL.yaml[,MORE.yaml]",
                        help="model config, or several YAMLs of one model joined by commas (later ones override); "
                        "repeat to compare models alternately (ratios are to the first)")
    parser.add_argument("--ckpt_path", "--ckpt-path", action="append", default=[], metavar="C.ckpt",
                        help="weights for the config at the same position (all or none)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--precision", default="32",
                        help="32 | 16-mixed | bf16-mixed: AMP autocast (16 / bf16 are the same)")
    parser.add_argument("--half-weights", action="store_true",
                        help="with a mixed precision: cast the weights to its half type once (no per-call casts)")
    parser.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=None,
                        help="TF32 convolutions and matmuls on / off for the run (default: torch's own setting)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per timed call")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls before timing")
    parser.add_argument("--iters", type=int, default=100, help="timed calls per pass")
    parser.add_argument("--breakdown-iters", type=int, default=None, help="timed calls of the stage pass (None: --iters)")
    parser.add_argument("--no-breakdown", dest="breakdown", action="store_false", help="skip the per-stage pass")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network submodules")
    parser.add_argument("--compile-mode", default=None, metavar="MODE",
                        help="torch.compile's mode (implies --compile): default | reduce-overhead (CUDA graphs) | "
                        "max-autotune | max-autotune-no-cudagraphs")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark on")
    parser.add_argument("--images", type=int, default=100, help="val images to cycle through")
    parser.add_argument("--flops-images", type=int, default=5, help="images the FLOPs are averaged over (0: none)")
    parser.add_argument("--data-config", default=None, metavar="DATA.yaml", help="data config added to every model")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Lightning CLI override for every model, e.g. model.init_args.pretrained=false")
    parser.add_argument("--random-weights", action="store_true",
                        help="no pretrained weights, and box regressors set so that random models make detections "
                        "with extent (benchmarks/random_weights.py): times the per-detection work without checkpoints")
    parser.add_argument("--out", default=None, help="write the result JSON here (atomically)")
    parser.set_defaults(handler=run_bench)


def cli_arguments(config: str, data_config: str | None, overrides: list[str]) -> list[str]:
    """The `maskbench fit` argument list that builds this model (verb first, as run_lightning expects); `config`
    may join several YAML files of the model with commas."""
    argv = ["fit"]
    for path in config.split(","):
        argv += ["--config", path]
    if data_config:
        argv += ["--config", data_config]
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise BenchError(f"--set expects KEY=VALUE, got {override!r}")
        argv += [f"--{key.removeprefix('--')}", value]
    return argv


def build_from_config(config: str, data_config: str | None = None, overrides: list[str] = (),
                      ckpt_path: str | None = None):
    """(model, datamodule) exactly as `maskbench fit --config CONFIG` would build them, weights from `ckpt_path`."""
    # The bench verb builds models as `maskbench fit` does, through the experiments layer's LightningCLI: the one
    # import of this command-line front end that runs against the layers (tests/test_imports.py names it).
    from benchmarks.lightning_cli import run_lightning

    cli = run_lightning(cli_arguments(config, data_config, list(overrides)), run=False)
    model = cli.model
    if ckpt_path:
        load_weights(model, ckpt_path)
    return model, cli.datamodule


def load_weights(model, ckpt_path: str) -> None:
    """The `state_dict` of a Lightning checkpoint (or a bare state dict) into `model`, every key matching."""
    import torch

    if not Path(ckpt_path).is_file():
        raise BenchError(f"{ckpt_path}: checkpoint not found")
    # The user's own checkpoint: Lightning's hyper-parameter entries need the full unpickler, as load_from_checkpoint.
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict):
        raise BenchError(f"{ckpt_path}: neither a Lightning checkpoint nor a state dict")
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise BenchError(
            f"{ckpt_path}: does not fit {type(model).__name__} as configured: missing {result.missing_keys[:5]}"
            f"{'...' if len(result.missing_keys) > 5 else ''}, unexpected {result.unexpected_keys[:5]}"
            f"{'...' if len(result.unexpected_keys) > 5 else ''}"
        )


def run_names(configs: list[str]) -> list[str]:
    """The shortest path tails that tell the configs apart: file stems ("r50_550"; a comma-joined config's first
    file), with parent folders added while two collide ("centermask/r50_3x", "istr/r50_3x"); a config given twice
    (two checkpoints of one model) is numbered ("r50_550 #2")."""
    paths = [Path(config.split(",")[0]).with_suffix("") for config in configs]
    for depth in range(1, max(len(path.parts) for path in paths) + 1):
        names = ["/".join(path.parts[-depth:]) for path in paths]
        if len(set(names)) == len(names):
            return names
    names = [Path(config.split(",")[0]).stem for config in configs]
    return [name if names.index(name) == i else f"{name} #{names[:i + 1].count(name)}" for i, name in enumerate(names)]


def prepare_codec(model, datamodule) -> dict | None:
    """A model with a fitted mask codec (ISTR's PCA): the config's codec file, or else one of the config's shape
    (K, mask size) fitted on its dataset's training split and cached (the synthetic default for the quickstart
    configs); the speed does not depend on the codec's values, but decoding needs one. Returns which codec was used
    ({"kind", "file"}; file null for a data-free or checkpoint codec), None for a model without a codec."""
    prepare = getattr(model, "prepare_codec", None)
    if prepare is None:
        return None
    fitted = prepare(datamodule)
    return {"kind": model.hparams.get("codec"), "file": fitted or model.hparams.get("codec_path")}


def run_bench(args) -> int:
    from benchmarks.progress import call_progress, expected_calls
    from benchmarks.random_weights import prepare_random_weights
    from benchmarks.speed import compare, load_val_images
    from benchmarks.speed_run import COMPILE_MODES, canonical_precision
    from datamodules.files import write_json_atomic

    try:
        try:
            args.precision = canonical_precision(args.precision)
        except ValueError as err:
            raise BenchError(f"--precision: {err}") from None
        if args.compile_mode is not None and args.compile_mode not in COMPILE_MODES:
            raise BenchError(f"--compile-mode must be one of {COMPILE_MODES}, got {args.compile_mode!r}")
        if args.half_weights and args.precision == "32":
            raise BenchError("--half-weights needs --precision 16-mixed or bf16-mixed")
        if args.ckpt_path and len(args.ckpt_path) != len(args.config):
            raise BenchError(f"give one --ckpt_path per --config ({len(args.config)}), or none")
        if args.random_weights and args.ckpt_path:
            raise BenchError("--random-weights and --ckpt_path exclude each other")
        checkpoints = args.ckpt_path or [None] * len(args.config)
        overrides = [*(RANDOM_WEIGHT_OVERRIDES if args.random_weights else []), *args.overrides]
        entries, codecs, randomised = [], [], []
        for name, config, ckpt in zip(run_names(args.config), args.config, checkpoints):
            print(f"building {name} ({config})", file=sys.stderr, flush=True)
            model, datamodule = build_from_config(config, args.data_config, overrides, ckpt)
            randomised.append(prepare_random_weights(model) if args.random_weights else None)
            codecs.append(prepare_codec(model, datamodule))
            entries.append((name, model, load_val_images(datamodule, args.images)))
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    total = expected_calls(len(entries), warmup=args.warmup, iters=args.iters, flops_images=args.flops_images,
                           breakdown=args.breakdown)
    with call_progress([entry[1] for entry in entries], total, "timing (model calls)"):
        result = compare(
            entries, device=args.device, precision=args.precision, batch_size=args.batch_size, warmup=args.warmup,
            iters=args.iters, channels_last=args.channels_last, compile=args.compile, breakdown=args.breakdown,
            cudnn_benchmark=args.cudnn_benchmark, breakdown_iters=args.breakdown_iters,
            flops_images=args.flops_images, compile_mode=args.compile_mode, half_weights=args.half_weights,
            tf32=args.tf32,
        )
    for record, codec, changed in zip(result["runs"], codecs, randomised):
        if codec is not None:
            record["codec"] = codec
        if changed is not None:  # the parameters prepare_random_weights set
            record["random_weights"] = changed
    print(format_table(result))
    for record in result["runs"]:
        if "codec" in record:
            print(f"{record['name']}: {record['codec']['kind']} mask codec from {record['codec']['file'] or 'the model'}")
    if args.out:
        write_json_atomic(Path(args.out), result["runs"][0] if len(entries) == 1 else result)
        print(f"wrote {args.out}")
    return 0


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _fps_cell(record: dict) -> str:
    """FPS ± the larger distance to an end of its 95 % interval (records from before the intervals: FPS alone)."""
    from benchmarks.stats import half_width

    noise = half_width(record["fps"], record.get("fps_ci95"))
    return f"{record['fps']:.2f}" + ("" if noise is None else f" ± {noise:.2f}")


def _interval_cell(interval) -> str:
    return "-" if interval is None else f"{interval[0]:.2f}-{interval[1]:.2f}"


def format_table(result: dict) -> str:
    """One row per model: input, FPS, latency, stages, params, GFLOPs, memory, and ratios to the first."""
    env = result["environment"]
    load = env.get("load_average") or {}
    lines = [
        f"device {env['device_name']} ({env['device']}), torch {env['torch']}, {env['cpu_threads']} CPU threads, "
        f"load average at start {load.get('start')} / end {load.get('end')}",
    ]
    first = result["runs"][0]
    flags = first["flags"]
    lines.append(
        f"precision {first['precision']}{' (half weights)' if flags['half_weights'] else ''}, batch "
        f"{first['batch_size']}, warm-up {flags['warmup']} (+{flags['warmup_calls'] - flags['warmup']} to meet every "
        f"input size), {flags['iters']} timed calls; flags channels_last={flags['channels_last']} "
        f"compile={flags['compile_mode'] or False} cudnn_benchmark={flags['cudnn_benchmark']} "
        f"TF32 conv={env['cudnn_allow_tf32']} matmul={env['float32_matmul_precision']}"
        + ("; random weights (--random-weights)" if "random_weights" in first else "")
    )
    width = max(16, *(len(record["name"]) for record in result["runs"]))
    header = (f"{'name':<{width}} {'input':>9} {'dets':>5} {'FPS ± 95 %':>14} {'FPS med':>7} {'FPS mdl':>7} "
              f"{'p50 ms':>8} {'p90 ms':>8} {'bb+neck':>8} {'heads':>7} {'post':>7} {'params M':>8} {'GFLOPs':>8} "
              f"{'mem MB':>7}")
    several = len(result["runs"]) > 1
    if several:
        header += f" {'x FPS':>6} {'x FPS 95 %':>11} {'x FPSm':>6} {'x GFLOP':>7}"
    lines.append(header)
    for record, ratio in zip(result["runs"], result["ratios"]):
        stages = record["stages_ms"] or {}
        row = (
            f"{record['name']:<{width}} {'x'.join(map(str, record['input_size'])):>9} "
            f"{_fmt(record['detections_per_image'], '5.1f'):>5} {_fps_cell(record):>14} {record['fps_median']:7.2f} "
            f"{_fmt(record['fps_model'], '7.2f'):>7} {record['latency_ms']['p50']:8.1f} "
            f"{record['latency_ms']['p90']:8.1f} {_fmt(stages.get('backbone_neck'), '8.1f'):>8} "
            f"{_fmt(stages.get('heads'), '7.1f'):>7} {_fmt(stages.get('postprocess'), '7.1f'):>7} "
            f"{record['params'] / 1e6:8.2f} {_fmt(record['gflops'], '8.1f'):>8} "
            f"{_fmt(record['peak_memory_mb'], '7.0f'):>7}"
        )
        if several:
            row += (f" {_fmt(ratio['fps'], '6.2f'):>6} {_interval_cell(ratio.get('fps_ci95')):>11} "
                    f"{_fmt(ratio['fps_model'], '6.2f'):>6} "
                    f"{_fmt(ratio['gflops'], '7.2f'):>7}")
        lines.append(row)
    lines.append("FPS: batch / mean latency (as the official figures); FPS med: / median; FPS mdl: model only, mean; "
                 "dets: detections per image (warm-up calls); stages: medians of the breakdown pass (ms); post = "
                 "everything outside the listed stage modules (NMS, decoding, mask assembly and pasting); "
                 "GFLOPs: 2 per multiply-add; ± 95 %: interval of the mean FPS from the spread between rounds (batch means)"
                 + ("; x FPS 95 %: interval of the median per-round FPS ratio (each round times the models back to "
                    "back, so load drift cancels)" if several else ""))
    for record in result["runs"]:
        if record["detections_per_image"] == 0:  # untrained weights below the score threshold, typically
            lines.append(f"warning: {record['name']} made no detections, so its per-detection work (mask head, "
                         "pasting) is not in its time; compare trained weights (--ckpt_path) or lower its score "
                         "threshold")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="maskbench bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    configure_parser(parser)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
