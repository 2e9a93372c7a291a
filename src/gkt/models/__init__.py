"""Models: architectures, per-model preprocessing, checkpoints and specs."""

from gkt.models.checkpoint import load_checkpoint, save_checkpoint, weights_hash
from gkt.models.classifier import ArchSpec, Classifier, check_label_space, register_source
from gkt.models.preprocess import Preprocess
from gkt.models.specs import DataInfo, ModelSpec, load_model, load_models

__all__ = ["ArchSpec", "Classifier", "DataInfo", "ModelSpec", "Preprocess", "check_label_space", "load_checkpoint",
           "load_model", "load_models", "register_source", "save_checkpoint", "weights_hash"]
