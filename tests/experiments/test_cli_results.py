"""`--results_json`: the standard COCO results file of `maskbench test|validate|predict`, read back by
`maskbench eval-json` to exactly the numbers the in-loop evaluator reported; the writer's joining of per-process
parts keeps each image once."""
import json

import pytest

from experiments.cli import main
from datamodules.results_writer import CocoResultsWriter

STATS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


@pytest.fixture(scope="module")
def trained_blob(tmp_path_factory, padded_synthetic_root):
    """BlobModel after its 6 training steps (non-zero AP), as a checkpoint, with its config file."""
    import yaml

    from tests.experiments.conftest import BLOB_CONFIG

    directory = tmp_path_factory.mktemp("blob")
    config = directory / "blob.yaml"
    config.write_text(yaml.safe_dump({**BLOB_CONFIG, "data": {**BLOB_CONFIG["data"],
                                                              "root": str(padded_synthetic_root)}}))
    assert main(["fit", "--config", str(config), f"--trainer.default_root_dir={directory / 'fit'}"]) == 0
    checkpoint = next((directory / "fit").rglob("*.ckpt"))
    return config, checkpoint


def test_results_file_round_trips_to_the_numbers_of_the_evaluation(trained_blob, padded_synthetic_root, tmp_path,
                                                                     capsys):
    config, checkpoint = trained_blob
    results = tmp_path / "detections.json"
    assert main(["test", "--config", str(config), "--ckpt_path", str(checkpoint), "--results_json", str(results),
                 f"--trainer.default_root_dir={tmp_path / 'test'}"]) == 0
    reported = json.loads(next((tmp_path / "test").rglob("metrics.json")).read_text())
    assert reported["test/segm_AP"] > 0  # a real result, so a wrong record changes the numbers

    records = json.loads(results.read_text())
    categories = {c["id"] for c in json.loads(
        (padded_synthetic_root / "annotations" / "instances_val2017.json").read_text())["categories"]}
    assert records and {"image_id", "category_id", "score", "bbox", "segmentation"} == set(records[0])
    assert {r["category_id"] for r in records} <= categories
    assert all(isinstance(r["segmentation"]["counts"], str) and len(r["bbox"]) == 4 for r in records)
    assert not list(tmp_path.glob(".detections.json*"))  # parts and temporary files are gone

    capsys.readouterr()
    ann = padded_synthetic_root / "annotations" / "instances_val2017.json"
    assert main(["eval-json", "--ann", str(ann), "--results", str(results), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    for iou_type in ("bbox", "segm"):
        assert {s: metrics[iou_type][s] for s in STATS} == {s: reported[f"test/{iou_type}_{s}"] for s in STATS}

    # predict streams the same records (same weights, same images), keeping none in memory
    predicted = tmp_path / "predicted.json"
    assert main(["predict", "--config", str(config), "--ckpt_path", str(checkpoint), "--results_json",
                 str(predicted), f"--trainer.default_root_dir={tmp_path / 'predict'}"]) == 0
    assert json.loads(predicted.read_text()) == records


def test_eval_json_says_which_area_convention_it_used(trained_blob, padded_synthetic_root, tmp_path, capsys):
    config, checkpoint = trained_blob
    results = tmp_path / "detections.json"
    assert main(["validate", "--config", str(config), "--ckpt_path", str(checkpoint), "--results-json",
                 str(results), f"--trainer.default_root_dir={tmp_path / 'val'}"]) == 0
    ann = padded_synthetic_root / "annotations" / "instances_val2017.json"
    capsys.readouterr()
    assert main(["eval-json", "--ann", str(ann), "--results", str(results)]) == 0
    assert "ranged by their mask area" in capsys.readouterr().out
    assert main(["eval-json", "--ann", str(ann), "--results", str(results), "--segm-area", "box"]) == 0
    assert "box area" in capsys.readouterr().out


class _Rank:
    def __init__(self, path, rank, world_size):
        self.global_rank, self.world_size, self.is_global_zero = rank, world_size, rank == 0
        self.strategy = self
        self.writer = CocoResultsWriter(path)

    def barrier(self, name=None):
        pass


def test_parts_of_several_processes_join_each_image_once(tmp_path):
    """DistributedSampler pads the last batch with repeated images: the file keeps each image id once, in rank
    order, as the evaluator does."""
    path = tmp_path / "results.json"
    ranks = [_Rank(path, rank, 2) for rank in range(2)]
    lines = {0: [(1, [{"image_id": 1, "score": 0.5}]), (3, [])], 1: [(2, [{"image_id": 2, "score": 0.7}]),
                                                                   (1, [{"image_id": 1, "score": 0.9}])]}
    for rank in ranks:
        rank.writer._open(rank)
        for image_id, records in lines[rank.global_rank]:
            rank.writer._part.write(json.dumps([image_id, records]) + "\n")
    ranks[1].writer._finish(ranks[1])  # rank 1 closes its part; only rank 0 joins
    assert not path.exists()
    ranks[0].writer._finish(ranks[0])
    assert json.loads(path.read_text()) == [{"image_id": 1, "score": 0.5}, {"image_id": 2, "score": 0.7}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
