"""YOLACT against the official code without the official checkout: the parity fixture written by
benchmarks/parity/yolact.py replayed on our model, and the timing mode's parts (the like-for-like check, the
alternating call order, the threshold that fixes the work, the profile wrappers' clean removal)."""
import pytest
import torch

from benchmarks.parity.common import compare, replay
from models.yolact.convert import map_state_dict, official_settings

import models.yolact.postprocess as our_postprocess
from benchmarks.parity import yolact as bench
from models.yolact import YOLACT

TINY = dict(
    num_classes=3, backbone="resnet18", pretrained=False, fpn_channels=16, num_prototypes=8, proto_channels=16,
    head_channels=16, input_size=64, anchor_scales=[8, 16, 32, 64, 128], detections_per_img=20, evaluate=False,
)


def _detections(count=5, size=(20, 24), seed=0):
    generator = torch.Generator().manual_seed(seed)
    x0y0 = torch.rand(count, 2, generator=generator) * 10
    return {
        "labels": torch.randint(0, 3, (count,), generator=generator),
        "scores": torch.rand(count, generator=generator).sort(descending=True).values,
        "boxes": torch.cat([x0y0, x0y0 + 5], dim=1),
        "masks": torch.rand(count, *size, generator=generator) > 0.5,
    }


def _copy(detections):
    return {key: value.clone() for key, value in detections.items()}


def test_identical_detections_and_truncated_boxes_pass():
    official = _detections()
    ours = _copy(official)
    ours["boxes"] += 0.9  # the official truncates its boxes to integers: under a pixel is the same box
    report = bench.compare_detections(official, ours)
    assert report["same"], report
    assert report["max_box_diff_px"] == pytest.approx(0.9, abs=1e-5)


@pytest.mark.parametrize("change", ["count", "label", "score", "box", "mask"])
def test_any_real_difference_fails(change):
    official = _detections()
    ours = _copy(official)
    if change == "count":
        ours = {key: value[:-1] for key, value in ours.items()}
    elif change == "label":
        ours["labels"][2] = (ours["labels"][2] + 1) % 3
    elif change == "score":
        ours["scores"][1] += 1e-3
    elif change == "box":
        ours["boxes"][3, 2] += 1.5
    else:
        ours["masks"][4, :3] = ~ours["masks"][4, :3]  # 3 of its 20 rows: 15 % of one mask
    assert not bench.compare_detections(official, ours)["same"]


def test_calls_alternate_and_get_their_round():
    log = []
    calls = {"a": lambda r: log.append(("a", r)), "b": lambda r: log.append(("b", r))}
    times = bench.alternate(calls, 4)
    assert log == [("a", 0), ("b", 0), ("b", 1), ("a", 1), ("a", 2), ("b", 2), ("b", 3), ("a", 3)]
    assert {name: len(t) for name, t in times.items()} == {"a": 4, "b": 4}


def test_not_a_checkout_is_named(tmp_path):
    (tmp_path / "yolact.py").write_text("")
    with pytest.raises(FileNotFoundError, match="eval.py"):
        bench.import_official(str(tmp_path))


def test_threshold_keeps_the_asked_number_of_candidates_on_the_median_image():
    torch.manual_seed(0)
    model = YOLACT(**TINY).eval()
    images = [torch.rand(3, 48, 56), torch.rand(3, 40, 40) * 0.2, torch.rand(3, 64, 48) * 0.6 + 0.4]
    with torch.no_grad():
        ranked = bench.best_scores(model, images)
    threshold, index = bench.threshold_for_candidates(ranked, 37)
    counts = sorted(int((scores > threshold).sum()) for scores in ranked)
    assert int((ranked[index] > threshold).sum()) == 37 and counts[1] == 37
    with pytest.raises(ValueError, match="--candidates"):
        bench.threshold_for_candidates(ranked, len(ranked[0]))


def test_stage_timer_covers_the_call_and_is_removed():
    torch.manual_seed(0)
    model = YOLACT(**TINY).eval()
    image = torch.rand(3, 48, 56)
    with torch.no_grad():
        before = model([image])[0]
        timer = bench._OursStageTimer(model)
        during = model([image])[0]
        stages = timer.stages()
        timer.close()
        after = model([image])[0]
    assert all(seconds >= 0 for seconds in stages.values()) and stages["backbone"] > 0 and stages["head"] > 0
    for result in (during, after):
        assert torch.equal(result["boxes"], before["boxes"]) and torch.equal(result["masks"], before["masks"])
    # Nothing of the wrappers is left: instance attributes gone, the module function restored.
    assert "network" not in vars(model) and "preprocess" not in vars(model) and "forward" not in vars(model.backbone)
    assert isinstance(model.postprocess, our_postprocess.YolactPostProcess)
    assert our_postprocess.assemble_masks.__module__ == "models.yolact.postprocess"


# ------------------------------------------------------------------------------------------ the parity fixture

@pytest.fixture(scope="module")
def parity():
    """(fixture, our model with the fixture's seeded weights, those weights)."""
    return replay("yolact", bench.parity_model, "benchmarks.parity.yolact")


def test_converter_maps_the_official_layout_back_to_our_weights(parity):
    """The official key list (354 keys, read from the official modules by the script) through our converter's
    settings reader and key mapping (what convert_yolact_official runs before writing the checkpoint)."""
    fixture, model, state = parity
    official = bench.to_official_layout(state, fixture["official_keys"])
    settings = official_settings(official, "official", 128)
    assert settings == {k: model.hparams[k] for k in settings}
    mapped = map_state_dict(official, model.state_dict(), "official")
    assert all(torch.equal(mapped[k], v) for k, v in state.items())


@pytest.mark.parametrize("name", sorted(bench.RELEASED_LAYOUTS))
def test_converter_reads_the_released_official_layouts(parity, name):
    """Key -> shape layouts of the released configurations, built by the script from the official code: every key
    maps (or is one the official loader drops too), every tensor of our model is filled, shapes agree."""
    fixture, _, _ = parity
    entry = fixture["layouts"][name]
    settings = bench.converter_reads_layout(name, entry)
    assert settings["num_classes"] == 80 and settings["input_size"] == entry["input_size"]
    assert settings["backbone"] == ("resnet50" if "resnet50" in name else "resnet101")


def test_raw_outputs_losses_and_assignments_match_the_official(parity):
    fixture, model, _ = parity
    ours = {**bench.ours_eval_outputs(model, fixture["images"]),
            **bench.ours_train_outputs(model, fixture["batch_images"], fixture["targets"])}
    failures = compare(fixture["official"], ours, fixture["tolerances"])
    assert not failures, failures
