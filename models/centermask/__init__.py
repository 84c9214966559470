"""CenterMask / CenterMask-Lite: FCOS + SAG-Mask + MaskIoU on VoVNetV2 (or any timm backbone), as a LightningModule."""
from models.centermask.model import CenterMask

__all__ = ["CenterMask"]
