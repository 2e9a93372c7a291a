"""Single-teacher knowledge transfer: registered methods on one shared trainer, and transfer metrics."""

from gkt.transfer import contrastive, dp, kl, mcl  # noqa: F401  (importing registers the methods)
from gkt.transfer.base import METHODS, Step, TransferMethod, create_method, describe_methods, register_method
from gkt.transfer.trainer import (
    DEFAULT_LR,
    TransferConfig,
    TransferOutcome,
    TransferTrainer,
    load_state,
    run_transfer,
)

__all__ = ["DEFAULT_LR", "METHODS", "Step", "TransferConfig", "TransferMethod", "TransferOutcome", "TransferTrainer",
           "create_method", "describe_methods", "load_state", "register_method", "run_transfer"]
