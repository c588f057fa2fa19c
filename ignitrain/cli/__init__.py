"""The ``ignitrain`` command line: config-driven training, resuming, evaluation, reports.

Run from the directory the job's import paths are relative to (the repository root
for ``examples.models``)::

    ignitrain train examples/configs/digits_cnn.yaml
    ignitrain train examples/configs/digits_cnn.yaml --set train.lr=0.1 --set train.num_epochs=3
    ignitrain train examples/configs/digits_cnn.yaml --nproc 2       # 2 processes (gloo on CPU)
    ignitrain resume runs/digits_cnn                  # continue from the latest checkpoint
    ignitrain evaluate runs/digits_cnn/checkpoints/<file> --data digits:test [--json]
    ignitrain predict runs/digits_cnn --data digits:test --out preds.pt [--argmax] [--targets]
    ignitrain lr-find examples/configs/digits_cnn.yaml
    ignitrain report runs/digits_cnn
    ignitrain export runs/big_model model.pt          # one full state dict from FSDP shards
    python -m ignitrain ...                                           # the same commands

Exit status: 0 success; 2 a mistake in the command line or the job (one message on
stderr, no traceback); 1 an unexpected error (with its traceback); 130 interrupted.
Set ``IGNITRAIN_DEBUG=1`` to see the traceback of every error.

The modules, one concept each: :mod:`~ignitrain.cli.parser` (the arguments),
:mod:`~ignitrain.cli.training` (``train``, ``resume``), :mod:`~ignitrain.cli.offline`
(loading a run's job and checkpoint without training), :mod:`~ignitrain.cli.inference`
(``evaluate``, ``predict``, ``export``), :mod:`~ignitrain.cli.tools` (``lr-find``,
``report``) and :mod:`~ignitrain.cli.entry` (``main``: exit statuses and errors).
"""

from ignitrain.cli.entry import main
from ignitrain.cli.parser import build_parser

__all__ = ["build_parser", "main"]
