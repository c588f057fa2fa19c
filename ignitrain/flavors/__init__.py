"""The flavor factories, and the public face of the parts they are built from.

Each ``create_*_trainer`` lives in its own module (``classification``, ``regression``,
``autoencoder``, ``gan``, ``seq2seq``, ``generic``). The steps they share are the
public names below, used also by :func:`ignitrain.attach` (``ignitrain/stack.py``):
:func:`check_config` (the config is checked once, at the door), :func:`build_trainer`
(the switchboard config -> handlers, then the Trainer) and :func:`attach_validation`.
"""

from ignitrain.flavors._attach import (
    AttachOptions,
    attach_handlers,
    attach_validation,
    build_trainer,
)
from ignitrain.flavors._parts import check_config

__all__ = [
    "AttachOptions",
    "attach_handlers",
    "attach_validation",
    "build_trainer",
    "check_config",
]
