"""A configuration that cannot be built ends `maskbench fit|validate|test|predict` with one `error:` line naming the
option and the fix, plus one hint line, and exit status 2, never jsonargparse's traceback of Union subtypes; with
--verbose the traceback is there for debugging. One test per kind of error."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from datamodules.errors import ConfigurationError
from experiments.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "experiments" / "configs"
MASK_RCNN = str(CONFIGS / "quickstart" / "mask_rcnn.yaml")
ISTR = str(CONFIGS / "quickstart" / "istr.yaml")


def without_logging_errors(stderr: str) -> str:
    """stderr less the "--- Logging error ---" blocks (up to their "Arguments:" line) that the logging module prints
    when a handler left over from an earlier test writes to that test's closed capture stream: an artifact of
    running many CLI calls in one pytest process, which a user never sees (the installed-script test runs alone)."""
    kept, skipping = [], False
    for line in stderr.splitlines():
        if line.startswith("--- Logging error ---"):
            skipping = True
        elif skipping and line.startswith("Arguments:"):
            skipping = False
        elif not skipping:
            kept.append(line)
    return "\n".join(kept)


def error_lines(stderr: str) -> list[str]:
    """The lines `maskbench` itself printed (Lightning logs "Seed set to 0" and the like on stderr too)."""
    lines = stderr.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("error: "))
    return lines[start:]


def assert_one_line_error(code: int, stderr: str, *expected: str) -> str:
    assert code == 2
    stderr = without_logging_errors(stderr)
    assert "Traceback" not in stderr and "Union subtypes" not in stderr and "Given value" not in stderr
    assert "LightningCLI's args parameter" not in stderr
    lines = error_lines(stderr)
    assert len(lines) == 2 and lines[1] == "(--verbose or MASKBENCH_VERBOSE=1 shows the traceback)", lines
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def validate(root, config, *options):
    return main(["validate", "--config", config, "--data.root", str(root), "--data.num_workers", "0",
                 "--trainer.enable_progress_bar", "false",
                 *options])


def test_missing_pretrained_weights_through_the_installed_script(small_synthetic_root, tmp_path):
    """The README's first command on a machine without cached weights (empty caches, hub offline)."""
    cache = tmp_path / "cache"
    env = {**os.environ, "HF_HOME": str(cache / "hf"), "HF_HUB_CACHE": str(cache / "hf" / "hub"),
           "TORCH_HOME": str(cache / "torch"), "HF_HUB_OFFLINE": "1", "MASKBENCH_VERBOSE": ""}
    command = [str(Path(sys.executable).parent / "maskbench"), "validate",
               "--config", str(CONFIGS / "models" / "mask_rcnn" / "r50_fpn.yaml"),
               "--config", str(CONFIGS / "data" / "coco2017.yaml"), "--data.root", str(small_synthetic_root)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert_one_line_error(done.returncode, done.stderr, "error: model (models.mask_rcnn.model.MaskRCNN): backbone "
                          "'resnet50.tv_in1k': pretrained=True but no weights are cached", "set pretrained_path")


@pytest.mark.slow  # ~18 s on the loaded 2-core box: a real validation pass
def test_local_weights_file_builds_and_runs(small_synthetic_root, tmp_path):
    """The fix the message names: pretrained_path pointing at a local copy of the timm weights."""
    import timm
    import torch

    weights = tmp_path / "resnet10t.pth"
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), weights)
    assert validate(small_synthetic_root, MASK_RCNN, "--model.init_args.pretrained", "true",
                    "--model.init_args.pretrained_path", str(weights), "--trainer.limit_val_batches", "1",
                    "--trainer.default_root_dir", str(tmp_path / "run")) == 0


def test_bad_hyperparameter(small_synthetic_root, capsys):
    code = validate(small_synthetic_root, MASK_RCNN, "--model.init_args.lr", "-1")
    assert_one_line_error(code, capsys.readouterr().err, "model (models.mask_rcnn.model.MaskRCNN)",
                          "lr must be a positive finite number, got -1.0")


def test_unknown_backbone(small_synthetic_root, capsys):
    code = validate(small_synthetic_root, MASK_RCNN, "--model.init_args.backbone", "resnet5")
    assert_one_line_error(code, capsys.readouterr().err, "model (models.mask_rcnn.model.MaskRCNN)",
                          "backbone 'resnet5' is not a timm model name", "timm.list_models()")


def test_codec_file_that_does_not_exist(small_synthetic_root, tmp_path, capsys):
    """ISTR evaluated with a codec_path that was never written: the codec cannot decode masks."""
    code = validate(small_synthetic_root, ISTR, "--model.init_args.codec_path", str(tmp_path / "missing.pt"),
                    "--trainer.default_root_dir", str(tmp_path / "run"))
    assert_one_line_error(code, capsys.readouterr().err, "error: model: ", "PCA mask codec is not fitted",
                          "codec_path")


def test_value_of_the_wrong_type(small_synthetic_root, capsys):
    code = validate(small_synthetic_root, MASK_RCNN, "--model.init_args.lr", "fast")
    assert_one_line_error(code, capsys.readouterr().err,
                          "error: invalid --model.init_args.lr (models.mask_rcnn.MaskRCNN): Expected a <class 'float'>")


def test_unknown_option(small_synthetic_root, capsys):
    code = validate(small_synthetic_root, MASK_RCNN, "--model.init_args.learning_rate", "0.1")
    assert_one_line_error(code, capsys.readouterr().err, "error: invalid --model (models.mask_rcnn.MaskRCNN)",
                          "Option 'learning_rate' is not accepted")


def test_config_file_that_does_not_exist(small_synthetic_root, tmp_path, capsys):
    code = validate(small_synthetic_root, str(tmp_path / "nope.yaml"))
    assert_one_line_error(code, capsys.readouterr().err, "error: invalid --config: File does not exist",
                          "nope.yaml")


def test_verbose_keeps_the_traceback(small_synthetic_root):
    with pytest.raises(ConfigurationError) as caught:
        validate(small_synthetic_root, MASK_RCNN, "--model.init_args.lr", "-1", "--verbose")
    root = caught.value
    while root.__cause__ is not None:
        root = root.__cause__
    assert isinstance(root, ValueError) and "lr must be a positive finite number" in str(root)


def test_checkpoint_that_does_not_exist(small_synthetic_root, tmp_path, capsys):
    code = validate(small_synthetic_root, MASK_RCNN, "--ckpt_path", str(tmp_path / "RUN" / "last.ckpt"))
    assert_one_line_error(code, capsys.readouterr().err, "error: invalid --ckpt_path: ", "last.ckpt: checkpoint file "
                          "not found")
