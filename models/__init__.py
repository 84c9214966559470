"""The architectures, by name. An explicit table: importing it registers nothing anywhere else."""
from models.mask_rcnn import MaskRCNN

MODELS = {"mask_rcnn": MaskRCNN}

__all__ = ["MODELS", "MaskRCNN"]
