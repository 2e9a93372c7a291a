"""Knowledge transfer: registered methods on one shared trainer, transfer metrics, and multi-teacher transfer
(sequential, parallel, soup; :mod:`gkt.transfer.multi`).

Called, the package is ``gkt transfer``'s Python call, :func:`gkt.experiments.transfer_run.transfer`:
``gkt.transfer(student="zoo:mlp", teacher="zoo:cnn", data="fmnist", epochs=1)``."""

from gkt.core.api import make_callable
from gkt.transfer import contrastive, dp, kl, mcl, multi_dp  # noqa: F401  (importing registers the methods)
from gkt.transfer.base import METHODS, Step, TransferMethod, create_method, describe_methods, register_method
from gkt.transfer.state import load_state
from gkt.transfer.trainer import (
    DEFAULT_LR,
    TRANSFER_FRACTION,
    TransferConfig,
    TransferOutcome,
    TransferTrainer,
    decoded_for,
    run_transfer,
)

__all__ = ["DEFAULT_LR", "METHODS", "TRANSFER_FRACTION", "Step", "TransferConfig", "TransferMethod", "TransferOutcome", "TransferTrainer",
           "create_method", "decoded_for", "describe_methods", "load_state", "register_method", "run_transfer"]

make_callable(__name__, "gkt.experiments.transfer_run:transfer")  # gkt.transfer(...) whether or not imported first
