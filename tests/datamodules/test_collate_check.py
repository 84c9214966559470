"""The loader's collate checks every target on the CPU (the models no longer check them on the device)."""
import pytest
import torch

from datamodules.coco import DatasetError, collate_instances


def _sample(boxes, labels, image_id=7):
    target = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels),
              "masks": torch.zeros(len(labels), 8, 8, dtype=torch.uint8), "iscrowd": torch.zeros(len(labels)),
              "image_id": image_id, "orig_size": (8, 8)}
    return torch.rand(3, 8, 8), target


def test_valid_and_empty_targets_pass():
    images, targets = collate_instances([_sample([[0, 0, 4, 4]], [0]), _sample([], [])])
    assert len(images) == 2 and len(targets) == 2


@pytest.mark.parametrize("box", [[2, 0, 2, 4], [0, 5, 4, 1], [0, 0, float("nan"), 4], [0, 0, float("inf"), 4]])
def test_a_box_without_area_or_not_finite_names_the_image(box):
    with pytest.raises(DatasetError, match="image id 7: target box .* has no area or is not finite"):
        collate_instances([_sample([[0, 0, 4, 4]], [0], image_id=1), _sample([[0, 0, 4, 4], box], [0, 1])])


def test_a_negative_label_names_the_image():
    with pytest.raises(DatasetError, match="image id 7: negative target label"):
        collate_instances([_sample([[0, 0, 4, 4]], [-1])])
