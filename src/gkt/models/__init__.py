"""Models: architectures, per-model preprocessing, checkpoints, specs and class maps."""

from gkt.models.checkpoint import load_checkpoint, save_checkpoint, weights_hash
from gkt.models.class_map import apply_class_map
from gkt.models.classifier import ArchSpec, Classifier, check_label_space, register_source
from gkt.models.own import load_module_checkpoint, wrap_module
from gkt.models.preprocess import Preprocess
from gkt.models.sources import HeadInputNet  # registers the hf: source
from gkt.models.specs import DataInfo, ModelSpec, load_model, load_models, register_spec_source
from gkt.models.timm_source import load_timm  # noqa: F401  (registers the timm: source)
from gkt.models.torchvision_source import load_torchvision  # noqa: F401  (registers the torchvision: source)

__all__ = ["ArchSpec", "Classifier", "DataInfo", "HeadInputNet", "ModelSpec", "Preprocess", "apply_class_map",
           "check_label_space", "load_checkpoint", "load_model", "load_models", "load_module_checkpoint",
           "register_source", "register_spec_source", "save_checkpoint", "weights_hash", "wrap_module"]
