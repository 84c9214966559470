"""Mask R-CNN training losses against torchvision's: same weights (through the converter), same batch, same RNG.

Both sample the RPN anchors and the RoIs with torch's global RNG in the same order (RPN sampler, then RoI
sampler; torchvision's training resize draws first, see below), so with the same seed they draw the same samples and the five losses must agree to float round-off.
A wrong loss normalisation, sampling fraction, box-coder weight or mask target would show up here, which the
eval-mode comparison in test_mask_rcnn.py cannot see.
"""
import pytest
import torch
from torchvision.models.detection import MaskRCNN as TorchvisionMaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.misc import FrozenBatchNorm2d

from models.mask_rcnn import MaskRCNN
from models.mask_rcnn.convert import convert_torchvision_maskrcnn

SIZE = dict(min_size=128, max_size=160)
# Fewer proposals and sampled RoIs than the defaults keep the RoI heads quick; both sides get the same numbers.
TV_SETTINGS = dict(rpn_post_nms_top_n_train=200, box_batch_size_per_image=64, **SIZE)
OURS_SETTINGS = dict(rpn_post_nms_top_n_train=200, box_batch_size_per_image=64, **SIZE)
TORCHVISION_NAMES = {  # torchvision's loss names -> ours
    "loss_objectness": "loss_rpn_cls",
    "loss_rpn_box_reg": "loss_rpn_box",
    "loss_classifier": "loss_cls",
    "loss_box_reg": "loss_box",
    "loss_mask": "loss_mask",
}


def _batch():
    """Two images with 3 and 2 objects (contiguous labels 0..3), box-shaped masks with a hole."""
    generator = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 120, 150, generator=generator), torch.rand(3, 140, 110, generator=generator)]
    targets = []
    for image, boxes, labels in zip(
        images,
        [[[10, 12, 70, 90], [60, 30, 140, 100], [5, 60, 50, 115]], [[20, 10, 90, 120], [40, 50, 100, 130]]],
        [[0, 2, 3], [1, 2]],
    ):
        boxes = torch.tensor(boxes, dtype=torch.float32)
        masks = torch.zeros(len(boxes), *image.shape[-2:], dtype=torch.uint8)
        for mask, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
            mask[y0:y1, x0:x1] = 1
            mask[(y0 + y1) // 2:y1, x0:(x0 + x1) // 2] = 0  # not a full box: the mask target is not trivial
        targets.append({"boxes": boxes, "labels": torch.tensor(labels), "masks": masks,
                        "iscrowd": torch.zeros(len(boxes), dtype=torch.int64)})
    return images, targets


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    """(torchvision model, our model) in train mode, holding the same random weights and BatchNorm statistics.

    torchvision's model is built as `maskrcnn_resnet50_fpn` builds it with pretrained weights (frozen BatchNorm,
    three trainable layers): the layout the converter targets, and one whose train mode keeps no batch statistics.
    """
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d,
                                   trainable_layers=3)
    reference = TorchvisionMaskRCNN(backbone, num_classes=5, **TV_SETTINGS)
    generator = torch.Generator().manual_seed(0)
    for module in reference.modules():
        if isinstance(module, FrozenBatchNorm2d):  # non-trivial statistics: a wrong eps or order would show
            module.running_mean.uniform_(-0.1, 0.1, generator=generator)
            module.running_var.uniform_(0.5, 1.5, generator=generator)
            module.weight.uniform_(0.5, 1.0, generator=generator)
    path = tmp_path_factory.mktemp("tv") / "maskrcnn.pth"
    torch.save(reference.state_dict(), path)
    checkpoint = convert_torchvision_maskrcnn(str(path), str(path.with_suffix(".ckpt")))
    ours = MaskRCNN.load_from_checkpoint(checkpoint, evaluate=False, **OURS_SETTINGS)
    return reference.train(), ours.train()


def test_training_losses_equal_torchvision(paired):
    reference, ours = paired
    images, targets = _batch()
    tv_targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1, "masks": t["masks"]} for t in targets]
    torch.manual_seed(7)
    expected = reference(images, tv_targets)
    torch.manual_seed(7)
    # torchvision's training transform draws one number per image to pick its short side among `min_size` (one
    # choice here); ours has no such draw, so take the same numbers off the RNG before sampling starts.
    for _ in images:
        torch.empty(1).uniform_(0.0, 1.0)
    losses = ours.compute_losses(images, targets)
    assert sorted(losses) == sorted(TORCHVISION_NAMES.values())
    for tv_name, name in TORCHVISION_NAMES.items():
        assert float(expected[tv_name].detach()) > 0, tv_name
        torch.testing.assert_close(losses[name], expected[tv_name], rtol=1e-6, atol=1e-7, msg=name)
