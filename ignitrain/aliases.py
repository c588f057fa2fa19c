"""Option names of the trainers our users come from, and what ignitrain calls them.

One table, :data:`ALIASES`: each name a reference trainer uses (lernomatic's
``learning_rate``, ``loss_function``, ``optim_function``; qurious' ``save_freq``,
``best_model_metric``, ``num_epochs``; pytorch-accelerated's ``create_scheduler_fn``;
lis2's ``save_interval``; common ``epochs``, ``n_epochs``, ``train_batch_size``...) ->
the ``TrainConfig`` field, and how the meaning differs when it does.

Decision: an alias is **refused** with a ``TypeError`` that names our field, never
accepted silently. Several of these names carry a different unit or shape
(``save_freq`` counts epochs, ``save_every`` iterations; ``stop_when_acc`` is one
number, ``stop_when`` a mapping), so accepting them would run a different job than the
user meant; and a config that mixes two vocabularies is one nobody can read later.
The error is raised at construction, before anything is built, so fixing it is one
rename.
"""

from __future__ import annotations

__all__ = ["ALIASES", "alias_hint"]

# alias -> (our field, what to know when moving the value over; "" when it is the same)
ALIASES: dict[str, tuple[str, str]] = {
    # lernomatic Trainer(**kwargs)
    "learning_rate": ("lr", ""),
    "loss_function": ("loss", "a name, a spec {'name': ..., **args}, a module or a callable"),
    "optim_function": ("optimizer", ""),
    "checkpoint_dir": ("output_dir", "checkpoints go to output_dir/checkpoints/"),
    "checkpoint_name": ("output_dir", "files are named checkpoint_<kind>_<tag>.pt"),
    "print_every": ("log_every", ""),
    "device_id": ("device", "a device string: 'cpu', 'cuda', 'cuda:1'"),
    "test_batch_size": ("val_batch_size", ""),
    "mtm_scheduler": ("momentum_scheduler", ""),
    "stop_when_acc": ("stop_when", "a mapping, e.g. stop_when={'accuracy': 0.99}"),
    "early_stop": ("early_stopping_patience", "the number of validations without improvement"),
    "save_hist": ("output_dir", "history.json is always written to output_dir"),
    # qurious Trainer.train(...)
    "save_dir": ("output_dir", ""),
    "save_freq": ("save_every", "save_freq counts epochs, save_every iterations (-1: every epoch)"),
    "best_model_metric": ("best_metric", "'eval_loss' and 'val/loss' are accepted as 'loss'"),
    "callback": ("callbacks", "a list of fn(trainer, epoch, metrics)"),
    "scheduler_step_per_batch": ("lr_scheduler", "each schedule steps at the unit it was made for"),
    # pytorch-accelerated Trainer.train(...)
    "create_scheduler_fn": ("lr_scheduler", ""),
    "gradient_accumulation_steps": ("grad_accumulation_steps", ""),
    "per_device_batch_size": ("batch_size", "batch_size is the global batch over all processes"),
    "mixed_precision": ("amp", "False, 'bf16', 'fp16' or 'auto'"),
    "clip_grad_norm": ("max_grad_norm", ""),
    # lis2 (DDP trainer)
    "save_interval": ("save_every", "iterations; -1 every epoch"),
    "save_last": ("save_every", "a last checkpoint is always written at the end"),
    "early_stopper": ("early_stopping_patience", ""),
    # common spellings elsewhere
    "epochs": ("num_epochs", ""),
    "n_epochs": ("num_epochs", ""),
    "max_epochs": ("num_epochs", ""),
    "train_batch_size": ("batch_size", "batch_size is the global batch over all processes"),
    "eval_batch_size": ("val_batch_size", ""),
    "valid_batch_size": ("val_batch_size", ""),
    "patience": ("early_stopping_patience", ""),
    "lr_schedule": ("lr_scheduler", ""),
    "scheduler": ("lr_scheduler", ""),
    "loss_fn": ("loss", ""),
    "criterion": ("loss", ""),
    "optim": ("optimizer", ""),
    "grad_clip": ("max_grad_norm", "or grad_clip_value to clip elements"),
    "accumulation_steps": ("grad_accumulation_steps", ""),
    "fp16": ("amp", "amp='fp16'"),
    "bf16": ("amp", "amp='bf16'"),
    "workers": ("num_workers", ""),
    "log_interval": ("log_every", ""),
    "output_path": ("output_dir", ""),
    "logdir": ("output_dir", "TensorBoard logs go to output_dir/tb/"),
    "resume_from_checkpoint": ("resume", "'latest' or a checkpoint path"),
    "max_iters": ("max_steps", ""),
    "num_steps": ("max_steps", ""),
    "max_norm": ("max_grad_norm", ""),
}


def alias_hint(name: str) -> str | None:
    """``" ignitrain calls it 'lr'."`` (with the difference, if any) for an alias, else None."""
    entry = ALIASES.get(str(name)) or ALIASES.get(str(name).lower())
    if entry is None:
        return None
    field, note = entry
    return f" ignitrain calls it {field!r}" + (f" ({note})." if note else ".")
