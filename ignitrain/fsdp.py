"""FSDP2 sharding: ``fully_shard`` per block and on the root, for ``parallel="fsdp"``.

Under DDP every process holds the whole model, its gradients and its optimizer state.
FSDP2 (``torch.distributed.fsdp.fully_shard``) keeps a ``1/N`` shard of each on every
rank and all-gathers a block's parameters just for its forward and backward. The unit
of gathering is a *wrapped* submodule: each block is wrapped on its own, so only one
block is ever whole in memory, and then the root, which takes every parameter left::

    model = shard_model(model, FSDPOptions.from_config(config), device)
    # model is the same object, now an FSDPModule: parameters are DTensors
    optimizer = torch.optim.AdamW(model.parameters())   # build it after sharding

Which submodules are blocks (``FSDPOptions.wrap``):

* ``"auto"``: ``nn.TransformerEncoderLayer``/``nn.TransformerDecoderLayer``, any class
  whose name ends in ``Block`` or ``Layer`` (Hugging Face style: ``GPT2Block``,
  ``LlamaDecoderLayer``, ``BertLayer``) and every child of an ``nn.Sequential`` that has
  parameters. The outermost match is a block; nothing inside it is wrapped again.
* a list of class names: modules of those classes.
* an integer ``n``: every smallest submodule holding at least ``n`` parameters.

Step features under FSDP (see :mod:`ignitrain.steps`): gradient accumulation skips the
reduce-scatter of non-final micro-batches with :func:`set_gradient_sync`; clipping with
``torch.nn.utils.clip_grad_norm_`` on the DTensor gradients computes the global norm (a
test checks it equals the unsharded one); the NaN guard all-reduces the loss flag.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import ignite.distributed as idist
import torch
from torch import nn

from ignitrain.amp import resolve_amp

__all__ = [
    "FSDPOptions",
    "shard_model",
    "block_modules",
    "is_fsdp",
    "set_gradient_sync",
]

_DEFAULT_BLOCK_SUFFIXES = ("Block", "Layer")
# torch's own "Layer"s that are not blocks worth a communication unit of their own
_NOT_BLOCKS = ("LayerNorm", "GroupNorm", "BatchNorm", "InstanceNorm", "RMSNorm")


@dataclass(frozen=True)
class FSDPOptions:
    """How :func:`shard_model` shards a model.

    Args:
        wrap: ``"auto"``, a tuple of class names, or a minimum parameter count.
        cpu_offload: Keep shards on the CPU (``CPUOffloadPolicy``).
        reshard_after_forward: Free gathered parameters after each forward.
        param_dtype: Compute dtype of gathered parameters (``torch.bfloat16`` for
            ``amp="bf16"``); ``None`` keeps the parameters' own dtype.
    """

    wrap: Any = "auto"
    cpu_offload: bool = False
    reshard_after_forward: bool = True
    param_dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        wrap = self.wrap
        ok = (
            wrap == "auto"
            or (isinstance(wrap, int) and not isinstance(wrap, bool) and wrap >= 1)
            or (
                isinstance(wrap, (list, tuple))
                and bool(wrap)
                and all(isinstance(n, str) and n for n in wrap)
            )
        )
        if not ok:
            raise ValueError(
                f"FSDPOptions.wrap={wrap!r} is not allowed: expected 'auto', a list of "
                "module class names, or a minimum parameter count >= 1"
            )
        if isinstance(wrap, list):
            object.__setattr__(self, "wrap", tuple(wrap))
        if self.param_dtype is not None and not isinstance(self.param_dtype, torch.dtype):
            raise TypeError(
                f"FSDPOptions.param_dtype={self.param_dtype!r} is not allowed: "
                "expected a torch.dtype or None"
            )

    @classmethod
    def from_config(cls, config: Any, device: torch.device | None = None) -> FSDPOptions:
        """Options from a ``TrainConfig``: ``amp="bf16"`` (or ``"auto"`` off CUDA)
        becomes FSDP2's bf16 parameter dtype; fp16 keeps autocast + GradScaler."""
        amp = resolve_amp(config.amp, device or torch.device("cpu"))
        return cls(
            wrap=config.fsdp_wrap,
            cpu_offload=config.fsdp_cpu_offload,
            reshard_after_forward=config.fsdp_reshard_after_forward,
            param_dtype=torch.bfloat16 if amp == "bf16" else None,
        )


def _is_default_block(module: nn.Module, parent: nn.Module | None) -> bool:
    if isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
        return True
    name = type(module).__name__
    if name.endswith(_DEFAULT_BLOCK_SUFFIXES) and not name.endswith(_NOT_BLOCKS):
        return True
    return isinstance(parent, nn.Sequential) and _n_params(module) > 0


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _walk(
    module: nn.Module, parent: nn.Module | None, wrap: Any, root: bool
) -> Iterator[nn.Module]:
    """Blocks under ``module`` (outermost match wins, the root itself never)."""
    if not root:
        if wrap == "auto":
            hit = _is_default_block(module, parent)
        elif isinstance(wrap, tuple):
            hit = type(module).__name__ in wrap
        else:  # min parameter count: the smallest module that reaches it
            hit = _n_params(module) >= wrap and not any(
                _n_params(c) >= wrap for c in module.children()
            )
        if hit:
            yield module
            return
    for child in module.children():
        yield from _walk(child, module, wrap, root=False)


def block_modules(model: nn.Module, wrap: Any = "auto") -> list[nn.Module]:
    """The submodules of ``model`` that :func:`shard_model` wraps on their own.

    Args:
        model: The model.
        wrap: As :attr:`FSDPOptions.wrap`.
    """
    wrap = FSDPOptions(wrap=wrap).wrap
    if wrap != "auto" and not isinstance(wrap, int):
        names = {type(m).__name__ for m in model.modules()}
        missing = [n for n in wrap if n not in names]
        if missing:
            raise ValueError(
                f"fsdp_wrap names module classes {missing} that {type(model).__name__} does "
                f"not contain; its classes are: {', '.join(sorted(names))}"
            )
    return list(_walk(model, None, wrap, root=True))


def shard_model(
    model: nn.Module, options: FSDPOptions | None = None, device: torch.device | None = None
) -> nn.Module:
    """Apply ``fully_shard`` to every block of ``model`` and to ``model`` itself.

    Call it on every rank, under a process group, before building the optimizer (the
    parameters become ``DTensor`` shards).

    Args:
        model: The model, on the CPU or on ``device``.
        options: Wrap policy, offload, mixed precision (default :class:`FSDPOptions`).
        device: This rank's device (default ``idist.device()``).

    Returns:
        ``model`` itself, now also an ``FSDPModule``.

    Raises:
        RuntimeError: no process group is initialised.
    """
    # lazy: torch.distributed (and FSDP2) is missing from some torch builds, and only
    # a multi-process FSDP run needs it
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise RuntimeError(
            "parallel='fsdp' needs a process group: run under torchrun or ignitrain.launch"
        )
    options = options or FSDPOptions()
    device = device or idist.device()
    mesh = init_device_mesh(device.type, (idist.get_world_size(),))
    kwargs: dict[str, Any] = {
        "mesh": mesh,
        "reshard_after_forward": options.reshard_after_forward,
    }
    if options.param_dtype is not None:
        # gather in bf16, reduce-scatter gradients in fp32 (the sharded master stays fp32)
        kwargs["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=options.param_dtype, reduce_dtype=torch.float32
        )
    if options.cpu_offload and device.type == "cpu":
        # FSDP2's CPUOffloadPolicy pins memory, which needs an accelerator; on the CPU
        # the shards are where offloading would put them anyway
        warnings.warn(
            "fsdp_cpu_offload=True has no effect: the model already runs on the CPU",
            UserWarning,
            stacklevel=2,
        )
    elif options.cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    if "offload_policy" not in kwargs:
        model = model.to(device)
    blocks = block_modules(model, options.wrap)
    for block in blocks:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)  # the root takes every parameter no block holds
    return model


def is_fsdp(module: nn.Module) -> bool:
    """Whether ``module`` (or the module ``torch.compile`` wraps) is an ``FSDPModule``."""
    from torch.distributed.fsdp import FSDPModule  # lazy: see shard_model

    return isinstance(getattr(module, "_orig_mod", module), FSDPModule)


def set_gradient_sync(models: Iterable[nn.Module], sync: bool) -> None:
    """FSDP2's counterpart of DDP's ``no_sync``: ``sync=False`` keeps the next backward's
    gradients unsharded and local (no reduce-scatter); ``True`` restores it.

    Unlike ``no_sync`` this is a setting, not a context: FSDP2 decides in the backward,
    which runs after the forward's context has closed.
    """
    for model in models:
        inner = getattr(model, "_orig_mod", model)
        if is_fsdp(inner):
            inner.set_requires_gradient_sync(sync)
