"""YOLACT: prototypes x coefficients, Fast NMS, as a LightningModule."""
from models.yolact.model import YOLACT

__all__ = ["YOLACT"]
