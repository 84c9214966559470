"""`maskbench bench` through the real CLI: configs built like `maskbench fit` builds them, weights from a
checkpoint, overrides, a comparison of two models, the JSON it writes."""
import json

import pytest
import torch
import yaml

from benchmarks.bench_cli import BenchError, build_from_config, cli_arguments, run_names
from experiments.cli import main
from tests.models.test_contract import TINY_CONFIGS

CLASS_PATHS = {"mask_rcnn": "models.mask_rcnn.MaskRCNN", "yolact": "models.yolact.YOLACT",
               "centermask": "models.centermask.CenterMask"}


@pytest.fixture
def tiny_config(small_synthetic_root, tmp_path):
    def write(name: str) -> str:
        config = {
            "model": {"class_path": CLASS_PATHS[name], "init_args": TINY_CONFIGS[name]},
            "data": {"root": str(small_synthetic_root), "batch_size": 2},
            "trainer": {"accelerator": "cpu", "devices": 1, "logger": False, "default_root_dir": str(tmp_path)},
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return str(path)

    return write


FAST = ["--warmup", "1", "--iters", "2", "--breakdown-iters", "1", "--images", "2", "--flops-images", "1"]


def test_bench_compares_two_configs_and_writes_the_json(tiny_config, tmp_path, capsys):
    out = tmp_path / "bench.json"
    status = main(["bench", "--config", tiny_config("mask_rcnn"), "--config", tiny_config("yolact"), *FAST,
                   "--out", str(out)])
    assert status == 0
    result = json.loads(out.read_text())
    assert [run["name"] for run in result["runs"]] == ["mask_rcnn", "yolact"]
    assert [run["model"] for run in result["runs"]] == ["MaskRCNN", "YOLACT"]
    assert result["ratios"][0]["fps"] == 1.0 and result["ratios"][1]["fps"] > 0
    for run in result["runs"]:
        assert run["timed_calls"] == {"end_to_end": 2, "model": 2, "breakdown": 1}
        assert run["num_images"] == 2 and run["environment"]["load_average"]["start"] is not None
    table = capsys.readouterr().out
    assert "mask_rcnn" in table and "yolact" in table and "load average" in table


def test_checkpoint_weights_and_overrides_are_applied(tiny_config, tmp_path):
    config = tiny_config("yolact")
    trained, _ = build_from_config(config)
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(1.0)
    ckpt = tmp_path / "weights.ckpt"
    torch.save({"state_dict": trained.state_dict()}, ckpt)
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"model": {"init_args": {"nms_top_k": 11}}}))

    model, datamodule = build_from_config(f"{config},{extra}", overrides=["model.init_args.detections_per_img=7"],
                                          ckpt_path=str(ckpt))
    assert model.hparams.detections_per_img == 7 and model.hparams.nms_top_k == 11
    assert model.hparams.num_classes == datamodule.num_classes  # linked from the data, as in fit
    for name, value in model.state_dict().items():
        assert torch.equal(value, trained.state_dict()[name]), name

    # the same through the verb: one config gives one record
    out = tmp_path / "one.json"
    assert main(["bench", "--config", f"{config},{extra}", "--ckpt_path", str(ckpt), *FAST, "--no-breakdown",
                 "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["name"] == "yolact" and record["stages_ms"] is None and record["fps_model"] > 0
    assert record["detections_per_image"] is not None


def test_bad_checkpoint_and_override_are_one_line_errors(tiny_config, tmp_path, capsys):
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"backbone.nonsense": torch.zeros(1)}}, other)
    assert main(["bench", "--config", tiny_config("yolact"), "--ckpt_path", str(other), *FAST]) == 2
    assert "does not fit YOLACT" in capsys.readouterr().err
    assert main(["bench", "--config", tiny_config("yolact"), "--ckpt_path", str(tmp_path / "missing.ckpt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    with pytest.raises(BenchError, match="KEY=VALUE"):
        cli_arguments("a.yaml", None, ["model.init_args.lr"])
    assert cli_arguments("a.yaml", "d.yaml", ["trainer.devices=1"]) == [
        "fit", "--config", "a.yaml", "--config", "d.yaml", "--trainer.devices", "1"]


def test_random_weights_build_without_pretrained_weights_and_set_the_box_regressors(tiny_config, tmp_path, capsys):
    """--random-weights: the CenterMask regressor bias set (benchmarks/random_weights.py), recorded, in the table,
    and a random CenterMask keeps its cap of detections (10), every box with area."""
    out = tmp_path / "random.json"
    groups = ["--set", "model.init_args.fcos_norm_groups=8"]  # batch 1: P7 is 1x1, so a group needs 2+ channels
    assert main(["bench", "--config", tiny_config("centermask"), "--random-weights", *groups, *FAST,
                 "--no-breakdown", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["random_weights"] == ["fcos_head.bbox_pred.bias"] and record["detections_per_image"] == 10
    assert "random weights (--random-weights)" in capsys.readouterr().out
    assert main(["bench", "--config", tiny_config("centermask"), "--random-weights", "--ckpt_path", "x.ckpt"]) == 2
    assert "--random-weights and --ckpt_path exclude each other" in capsys.readouterr().err


def test_run_names_tell_configs_apart():
    assert run_names(["configs/yolact/r50_550.yaml", "configs/mask_rcnn/r50_fpn.yaml"]) == ["r50_550", "r50_fpn"]
    # same stems in different folders: the folder is added to every name, as far as needed
    assert run_names(["c/centermask/r50_3x.yaml", "c/istr/r50_3x.yaml,over.yaml", "c/yolact/r50_550.yaml"]) == [
        "centermask/r50_3x", "istr/r50_3x", "yolact/r50_550"]
    # one config twice (two checkpoints): numbered
    assert run_names(["a/r50.yaml", "a/r50.yaml", "a/r50.yaml"]) == ["r50", "r50 #2", "r50 #3"]


def test_a_model_without_detections_is_flagged(tiny_config, capsys):
    """Untrained weights below the score threshold skip the mask head and pasting: the table says so."""
    config = tiny_config("yolact")
    bench = ["bench", "--config", config, *FAST, "--no-breakdown", "--set"]
    assert main([*bench, "model.init_args.score_thresh=1.01"]) == 0
    assert "warning: yolact made no detections" in capsys.readouterr().out
    assert main([*bench, "model.init_args.score_thresh=0.0"]) == 0
    assert "made no detections" not in capsys.readouterr().out


def test_precision_half_weights_tf32_and_compile_mode_flags(tiny_config, tmp_path, capsys):
    out = tmp_path / "half.json"
    assert main(["bench", "--config", tiny_config("yolact"), *FAST, "--no-breakdown", "--precision", "bf16-mixed",
                 "--half-weights", "--no-tf32", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["precision"] == "bf16-mixed" and record["flags"]["half_weights"]
    assert record["environment"]["cudnn_allow_tf32"] is False
    assert record["environment"]["float32_matmul_precision"] == "highest"
    assert "precision bf16-mixed (half weights)" in capsys.readouterr().out
    for bad, message in ((["--precision", "8"], "--precision"), (["--half-weights"], "--half-weights needs"),
                         (["--compile-mode", "fastest"], "--compile-mode must be one of")):
        assert main(["bench", "--config", "never-read.yaml", *bad]) == 2
        assert message in capsys.readouterr().err
