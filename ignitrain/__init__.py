"""ignitrain: training flavors built from ordinary PyTorch-Ignite engines and handlers."""

from ignitrain.config import TrainConfig

__all__ = ["TrainConfig"]
__version__ = "0.1.0"
