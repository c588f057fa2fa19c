"""Config-driven jobs: a YAML/JSON file names the flavor, the model, the data and the options.

A job file::

    flavor: classification                 # classification | regression | autoencoder | ...
    model:
      class: examples.models.DigitsCNN     # import path of an nn.Module class (or factory)
      args: {channels: 16}
    data:
      factory: ignitrain.datasets.digits   # a callable returning Splits or (train, val[, test])
      args: {seed: 0}
    train:                                 # TrainConfig options
      num_epochs: 10
      lr: 0.05
      output_dir: runs/digits_cnn

Flavors with several models (GAN) take ``models: {generator: {...}, discriminator: {...}}``
instead of ``model``; ``flavor_args`` holds extra keyword arguments for the flavor's
factory. ``flavor`` may also be the import path of your own factory with the signature
``factory(model, config=, train_data=, val_data=)``.

Loading a job resolves it: shorthands are expanded (``model: pkg.Class``,
``data: digits``), ``--set`` overrides are applied and ``train`` is replaced by the full
``TrainConfig.to_dict()``, so the file written to ``output_dir/config.yaml`` records
every option and ``ignitrain train output_dir/config.yaml`` runs the same job again.

Every mistake in a job is a :class:`JobError` whose message names the file, the key and
what is allowed; the CLI prints it without a traceback.

The package, one concept per module: :mod:`~ignitrain.jobs.spec` (what a job file may
say, resolving it), :mod:`~ignitrain.jobs.build` (importing and building what it names),
:mod:`~ignitrain.jobs.run` (the per-process entry point and the written record).
"""

from __future__ import annotations

from ignitrain.errors import JobError
from ignitrain.import_paths import resolve_import
from ignitrain.jobs.build import (
    JobData,
    build_data,
    build_model,
    build_models,
    build_trainer,
    check_job,
    flavor_factory,
)
from ignitrain.jobs.run import configure_logging, run_training, write_job
from ignitrain.jobs.spec import (
    FLAVORS,
    JOB_KEYS,
    apply_overrides,
    expand_shorthand,
    load_job,
    parse_override,
    resolve_job,
    resolve_spec,
)

__all__ = [
    "FLAVORS",
    "JOB_KEYS",
    "JobData",
    "JobError",
    "apply_overrides",
    "build_data",
    "build_model",
    "build_models",
    "build_trainer",
    "check_job",
    "configure_logging",
    "expand_shorthand",
    "flavor_factory",
    "load_job",
    "parse_override",
    "resolve_import",
    "resolve_job",
    "resolve_spec",
    "run_training",
    "write_job",
]
