"""ignitrain: training flavors built from ordinary PyTorch-Ignite engines and handlers.

Importing the package only defines names: it seeds nothing, configures no logging and
probes no device.
"""

from ignitrain.config import TrainConfig
from ignitrain.distributed import launch
from ignitrain.flavors.autoencoder import create_autoencoder_trainer
from ignitrain.flavors.classification import create_classification_trainer
from ignitrain.flavors.gan import create_gan_trainer
from ignitrain.flavors.generic import create_trainer
from ignitrain.flavors.regression import create_regression_trainer
from ignitrain.flavors.seq2seq import create_seq2seq_trainer
from ignitrain.handlers.checkpoint import load_checkpoint
from ignitrain.handlers.history import History
from ignitrain.lr_finder import find_lr
from ignitrain.rebuild import rebuild_model
from ignitrain.seeding import seed_everything
from ignitrain.stack import attach, resumable_loader
from ignitrain.trainer import Trainer
from ignitrain.version import __version__ as __version__

__all__ = [
    "TrainConfig",
    "Trainer",
    "History",
    "create_classification_trainer",
    "create_regression_trainer",
    "create_autoencoder_trainer",
    "create_gan_trainer",
    "create_seq2seq_trainer",
    "create_trainer",
    "load_checkpoint",
    "launch",
    "find_lr",
    "seed_everything",
    "rebuild_model",
    "attach",
    "resumable_loader",
]
