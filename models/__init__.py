"""The architectures, by name. An explicit table: importing it registers nothing anywhere else."""
from models.mask_rcnn import MaskRCNN
from models.yolact import YOLACT

MODELS = {"mask_rcnn": MaskRCNN, "yolact": YOLACT}

__all__ = ["MODELS", "MaskRCNN", "YOLACT"]
