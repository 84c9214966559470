"""The architectures, by name. An explicit table: importing it registers nothing anywhere else."""
from models.centermask import CenterMask
from models.istr import ISTR
from models.mask_rcnn import MaskRCNN
from models.yolact import YOLACT

MODELS = {"mask_rcnn": MaskRCNN, "centermask": CenterMask, "yolact": YOLACT, "istr": ISTR}

__all__ = ["MODELS", "CenterMask", "ISTR", "MaskRCNN", "YOLACT"]
