"""`maskbench quickstart` (= `make demo`): every quickstart model trained, evaluated, benchmarked, recorded; the
leaderboard printed and plotted; a second call finds the records and trains nothing."""
import pytest

import models
from experiments import results as store
from experiments.quickstart import quickstart, quickstart_configs
from experiments.run import BenchmarkSettings


def test_quickstart_covers_every_model_and_names_unknown_ones():
    assert list(quickstart_configs()) == list(models.MODELS)
    assert list(quickstart_configs(["yolact"])) == ["yolact"]
    with pytest.raises(ValueError, match="no quickstart config for nope"):
        quickstart_configs(["nope"])


def test_every_quickstart_fine_tunes_from_the_package_weights_with_one_budget():
    import timm
    import yaml

    budgets = {}
    for name, path in quickstart_configs().items():
        config = yaml.safe_load(path.read_text())
        args = config["model"]["init_args"]
        assert args["backbone"] == "tf_efficientnet_lite0" and args["pretrained"] is True, name
        assert args.get("pretrained_path") is None, name  # the package source, not a file of this machine
        budgets[name] = (config["trainer"]["max_steps"], config["data"]["batch_size"])
        # Inputs normalised as the weights were trained (timm's pretrained config: mean 0.5, std 0.5), wherever the
        # model has the option (Mask R-CNN's normalisation is fixed in its transform).
        pretrained_cfg = timm.models.get_pretrained_cfg(args["backbone"])
        if "pixel_mean" in args:
            assert args["pixel_mean"] == list(pretrained_cfg.mean) and args["pixel_std"] == list(pretrained_cfg.std)
    assert len(set(budgets.values())) == 1, f"one shared budget (steps, batch) for every architecture: {budgets}"


@pytest.mark.slow  # four real architectures, a few steps each: ~2-4 min on 2 cores
def test_quickstart_end_to_end_on_a_small_dataset(tmp_path, capsys):
    from datamodules.synthetic import synthetic_root

    # 40 training images: enough masks (~80) for ISTR to fit its 60-component mask codec at setup.
    root = synthetic_root(num_train=40, num_val=6, image_size=96, seed=0)
    results = tmp_path / "quickstart"
    shrink = [f"--data.root={root}", "--data.batch_size=2", "--data.num_workers=0",
              "--model.init_args.bn_min_batch=2",  # BN on 2 images (YOLACT refuses fewer than 6)
              "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.enable_progress_bar=false"]
    bench = BenchmarkSettings(warmup=1, iters=2, breakdown=False)
    assert quickstart(results, wandb="off", benchmark=bench, extra_overrides=shrink) == 0
    out = capsys.readouterr().out
    records = store.load_records([results])
    assert sorted(r["model"] for r in records) == sorted(models.MODELS)
    assert all(r["status"] == "ok" and set(r["metrics"]) == {"bbox", "segm"} for r in records)
    table = out.split("## Leaderboard")[1]
    for name in models.MODELS:
        assert f"| {name} |" in table
    assert (results / "leaderboard" / "ap_vs_fps.png").stat().st_size > 0

    assert quickstart(results, wandb="off", benchmark=bench, extra_overrides=shrink) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == len(models.MODELS)
