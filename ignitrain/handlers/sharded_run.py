"""Old import path of :mod:`ignitrain.handlers.checkpoint.sharded_run` (FSDP checkpoints).

The trainer's sharded checkpoints moved into the checkpoint package, beside the handler
that uses them (no import cycle); every name stays importable from here.
"""

from ignitrain.handlers.checkpoint.latest import latest_checkpoint
from ignitrain.handlers.checkpoint.sharded_run import (
    META,
    folder_iteration,
    latest_sharded,
    load_file_into_sharded,
    load_trainer_sharded,
    remove_stale_folders,
    save_trainer_sharded,
    sharded_files,
    trainer_saver,
    trainer_to_save,
    uses_fsdp,
)

__all__ = [
    "META",
    "folder_iteration",
    "latest_checkpoint",
    "latest_sharded",
    "load_file_into_sharded",
    "load_trainer_sharded",
    "remove_stale_folders",
    "save_trainer_sharded",
    "sharded_files",
    "trainer_saver",
    "trainer_to_save",
    "uses_fsdp",
]
