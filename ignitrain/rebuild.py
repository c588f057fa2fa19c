"""Rebuild a trained model from its checkpoint alone: the class, its arguments, the weights.

Every checkpoint holds a ``model_description`` (see
:mod:`ignitrain.describe`): the class's import path and either its constructor
arguments or, for a Hugging Face model, its ``config`` as a dict.
:func:`rebuild_model` imports the class, builds it from that description and loads the
weights with :func:`ignitrain.load_checkpoint` (``weights_only=True``). Importing the
class runs that module's code, as any ``import`` does: rebuild only from checkpoints
whose model code you trust.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from torch import nn

from ignitrain.checkpoint_choice import choose_checkpoint
from ignitrain.handlers.checkpoint import load_checkpoint, safe_load
from ignitrain.jobs import JobError, resolve_import

__all__ = ["rebuild_model", "model_from_description"]


def model_from_description(description: Mapping[str, Any], *, name: str = "model") -> nn.Module:
    """Build (untrained) the model a description names.

    Raises:
        ValueError: the description has no class, or its arguments do not fit it.
        TypeError: the class does not build a ``torch.nn.Module``.
    """
    if not isinstance(description, Mapping) or not isinstance(description.get("class"), str):
        raise ValueError(
            f"model_description[{name!r}]={description!r} is not allowed: expected a mapping "
            "with the model's 'class' import path"
        )
    path = description["class"]
    try:
        cls = resolve_import(path, what=f"model_description[{name!r}].class")
    except JobError as exc:
        raise ValueError(str(exc)) from None
    hf_config = description.get("hf_config")
    try:
        if hf_config is not None:
            # Hugging Face: cls(config); from_dict ignores the keys it adds itself
            model = cls(cls.config_class.from_dict(dict(hf_config)))
        else:
            model = cls(**dict(description.get("args") or {}))
    except TypeError as exc:
        raise ValueError(
            f"cannot rebuild {path} from model_description[{name!r}]: {exc}. Its constructor "
            "arguments are recorded only when the model keeps them as attributes of the "
            "same name (self.hidden = hidden)"
        ) from None
    if not isinstance(model, nn.Module):
        raise TypeError(f"{path}(...) built {type(model).__name__}, not a torch.nn.Module")
    return model


def rebuild_model(checkpoint: str | os.PathLike, *, which: str = "best") -> Any:
    """The trained model(s) of a checkpoint, built from its description alone.

    Args:
        checkpoint: A checkpoint file, or a run directory (pick with ``which``).
        which: For a run directory: ``"best"`` (default) or ``"last"``. The model is
            built on the CPU; move it afterwards.

    Returns:
        The model in eval mode, or a dict name -> model for flavors with several
        (a GAN's ``generator`` and ``discriminator``).

    Raises:
        FileNotFoundError: no such file or no valid checkpoint in the directory.
        CheckpointError: the file is not a readable ignitrain checkpoint.
        ValueError: the checkpoint has no usable model description.

    Example:
        >>> model = ignitrain.rebuild_model("runs/digits_cnn")  # doctest: +SKIP
        >>> model(x).argmax(1)  # doctest: +SKIP
    """
    path = choose_checkpoint(checkpoint, which).path
    payload = safe_load(path)
    descriptions = payload.get("model_description")
    if not isinstance(descriptions, Mapping) or not descriptions:
        raise ValueError(f"checkpoint {str(path)!r} holds no model description to rebuild from")
    models = {name: model_from_description(d, name=name) for name, d in descriptions.items()}
    load_checkpoint(path, **models)
    for model in models.values():
        model.eval()
    return models["model"] if list(models) == ["model"] else models
