"""`maskbench run` records the schedule as trained: linearly scaled to the real batch, with the values as written."""
from experiments import results as store
from experiments.cli import main


def test_the_run_record_stores_the_scaled_schedule(blob_config, tmp_path, capsys):
    results = tmp_path / "results"
    # batch 2 against a reference batch of 1: lr x2, max_steps 6 -> 3
    argv = ["run", "--config", str(blob_config), "--results", str(results), "--no-wandb", "--bench-warmup=1",
            "--bench-iters=1", "--bench-no-breakdown", "--model.init_args.reference_batch_size", "1"]
    assert main(argv) == 0
    (path,) = (results / "records").glob("*.json")
    schedule = store.read_record(path)["training"]["schedule"]
    assert schedule["scaled"] and schedule["factor"] == 2.0 and schedule["batch_size"] == 2
    assert schedule["lr"] == 0.1 and schedule["max_steps"] == 3
    assert schedule["written"] == {"lr": 0.05, "lr_steps": [], "warmup_steps": 0, "max_steps": 6}
    assert store.read_record(path)["training"]["global_step"] == 3
    out = capsys.readouterr().out
    assert out.count("linear scaling:") == 1 and "lr 0.05 -> 0.1" in out and "max_steps 6 -> 3" in out
