"""Mask R-CNN: torchvision's RPN and RoI heads on a timm backbone + FPN, as a LightningModule."""
from models.mask_rcnn.model import MaskRCNN

__all__ = ["MaskRCNN"]
