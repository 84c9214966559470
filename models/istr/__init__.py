"""ISTR (Hu et al., 2021) with its PCA mask codec: transformer set prediction of classes, boxes and mask embeddings."""
from models.istr.model import ISTR

__all__ = ["ISTR"]
