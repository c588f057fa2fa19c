"""What a job file may say, and resolving it into plain, complete data.

A job is read (one YAML/JSON reader for the package, :func:`ignitrain._files.read_mapping`),
``--set`` overrides are applied, shorthands are expanded and ``train`` becomes the full
``TrainConfig.to_dict()``. Nothing is imported or built here (see :mod:`ignitrain.jobs.build`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ignitrain._files import load_yaml, read_mapping
from ignitrain.config import TrainConfig
from ignitrain.datasets import NAMES as DATASET_NAMES
from ignitrain.errors import ConfigError, JobError, suggest

__all__ = [
    "FLAVORS",
    "JOB_KEYS",
    "apply_overrides",
    "expand_shorthand",
    "load_job",
    "parse_override",
    "resolve_job",
    "resolve_spec",
]

JOB_KEYS = ("flavor", "model", "models", "data", "train", "flavor_args")
"""Top-level keys a job file may hold."""

FLAVORS: dict[str, tuple[str, str]] = {
    "classification": ("ignitrain.flavors.classification", "create_classification_trainer"),
    "regression": ("ignitrain.flavors.regression", "create_regression_trainer"),
    "autoencoder": ("ignitrain.flavors.autoencoder", "create_autoencoder_trainer"),
    "gan": ("ignitrain.flavors.gan", "create_gan_trainer"),
    "seq2seq": ("ignitrain.flavors.seq2seq", "create_seq2seq_trainer"),
    "generic": ("ignitrain.flavors.generic", "create_trainer"),
}
"""Flavor name -> (module, factory function) of the built-in flavors."""


def load_job(path: str | os.PathLike, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Read a job file, apply ``key=value`` overrides and resolve it.

    Args:
        path: A ``.yaml``/``.yml`` or ``.json`` job file.
        overrides: ``"train.lr=0.1"``-style strings (values are parsed as YAML).

    Returns:
        The resolved job (plain data; see :func:`resolve_job`).

    Raises:
        JobError: missing file, bad YAML/JSON (with line), unknown key, bad override.
    """
    path = Path(path)
    raw = _read_job_file(path)
    raw = apply_overrides(raw, overrides)
    return resolve_job(raw, source=str(path), default_output_dir=f"runs/{path.stem}")


def _read_job_file(path: Path) -> dict[str, Any]:
    """The mapping in a YAML or JSON job file (the package's one reader); errors name the file."""
    if not path.is_file():
        raise JobError(f"job file {str(path)!r} does not exist")
    try:
        return read_mapping(path, what="job file")
    except ValueError as exc:  # ConfigError: bad suffix, YAML/JSON or not a mapping
        raise JobError(str(exc).replace("mapping of options", "mapping of job keys")) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=0.1"`` -> ``(["train", "lr"], 0.1)``; the value is parsed as YAML.

    A key without a section that is a ``TrainConfig`` option means ``train.<key>``.
    """
    if not isinstance(text, str) or "=" not in text:
        raise JobError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.lr=0.1")
    key, _, value_text = text.partition("=")
    parts = key.strip().split(".")
    if not key.strip() or any(not p for p in parts):
        raise JobError(f"--set {text!r}: the key must be a dotted path, e.g. train.lr")
    if len(parts) == 1 and parts[0] not in JOB_KEYS and parts[0] in TrainConfig.field_names():
        parts = ["train", parts[0]]
    if parts[0] not in JOB_KEYS:
        raise JobError(
            f"--set {text!r}: unknown section {parts[0]!r}.{suggest(parts[0], JOB_KEYS)} "
            f"Sections: {', '.join(JOB_KEYS)}"
        )
    try:
        value = load_yaml(value_text, source="value") if value_text.strip() else None
    except ConfigError as exc:
        problem = str(exc).partition(": ")[2].partition(": ")[2] or str(exc)
        raise JobError(f"--set {text!r}: the value is not valid YAML: {problem}") from None
    return parts, value


def apply_overrides(job: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of ``job`` with each ``key=value`` override applied in order."""
    job = copy.deepcopy(dict(job))
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = job
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif isinstance(child, str) and depth == 0 and part in ("model", "data"):
                # expand a shorthand so that e.g. model.args.hidden can be set on it
                child = node[part] = expand_shorthand(part, child)
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise JobError(f"--set {text!r}: {where} is {child!r}, not a mapping")
            node = child
        node[parts[-1]] = value
    return job


def resolve_job(
    raw: Mapping[str, Any], *, source: str = "job", default_output_dir: str = "runs/job"
) -> dict[str, Any]:
    """Check a job mapping and return its resolved form.

    The resolved job has ``flavor``; ``model`` (or ``models``) as ``{class, args}``;
    ``data`` as ``{factory, args}``; ``flavor_args``; and ``train`` as the complete,
    validated ``TrainConfig.to_dict()`` (``output_dir`` defaulting to
    ``default_output_dir``). Nothing is imported here.
    """
    if not isinstance(raw, Mapping):
        raise JobError(f"{source}: expected a mapping of job keys, got {type(raw).__name__}")
    for key in raw:
        if key not in JOB_KEYS:
            raise JobError(
                f"{source}: unknown key {key!r}.{suggest(key, JOB_KEYS)} "
                f"Allowed keys: {', '.join(JOB_KEYS)}"
            )
    flavor = raw.get("flavor")
    if not isinstance(flavor, str) or not flavor:
        raise JobError(
            f"{source}: 'flavor' must name the kind of training: one of {', '.join(FLAVORS)} "
            f"(or the import path of a factory), got {flavor!r}"
        )
    if flavor not in FLAVORS and "." not in flavor:
        raise JobError(
            f"{source}: unknown flavor {flavor!r}.{suggest(flavor, FLAVORS)} "
            f"Allowed: {', '.join(FLAVORS)}, or the import path of a trainer factory"
        )
    job: dict[str, Any] = {"flavor": flavor}
    if ("model" in raw) == ("models" in raw):
        raise JobError(
            f"{source}: give exactly one of 'model' (one model) or 'models' "
            "(a mapping name -> model, e.g. for a GAN)"
        )
    if "model" in raw:
        job["model"] = resolve_spec(raw["model"], "model", "class", source)
    else:
        models = raw["models"]
        if not isinstance(models, Mapping) or not models:
            raise JobError(
                f"{source}: 'models' must be a non-empty mapping name -> {{class, args}}"
            )
        job["models"] = {
            str(name): resolve_spec(spec, f"models.{name}", "class", source)
            for name, spec in models.items()
        }
    if "data" not in raw:
        raise JobError(
            f"{source}: missing key 'data', e.g. data: {{factory: ignitrain.datasets.digits}}"
        )
    job["data"] = resolve_spec(raw["data"], "data", "factory", source)
    flavor_args = raw.get("flavor_args") or {}
    if not isinstance(flavor_args, Mapping):
        raise JobError(f"{source}: 'flavor_args' must be a mapping, got {flavor_args!r}")
    job["flavor_args"] = dict(flavor_args)
    job["train"] = _resolve_train(raw.get("train"), source, default_output_dir)
    return job


def expand_shorthand(section: str, value: str) -> dict[str, Any]:
    """``model: pkg.Class`` -> ``{class, args}``; ``data: digits`` -> ``{factory, args}``."""
    if section == "data":
        key = value.strip().lower().replace("-", "_")
        factory = f"ignitrain.datasets.{key}" if key in DATASET_NAMES else value
        return {"factory": factory, "args": {}}
    return {"class": value, "args": {}}


def resolve_spec(spec: Any, section: str, target_key: str, source: str) -> dict[str, Any]:
    """``{class|factory: path, args: {...}}`` from the mapping or string shorthand.

    Args:
        spec: The job's ``model``/``models.<name>``/``data`` entry.
        section: Its key in the job (``"model"``, ``"models.generator"``, ``"data"``).
        target_key: ``"class"`` (models) or ``"factory"`` (data).
        source: The job file's name, for the error.

    Raises:
        JobError: the entry has the wrong shape; the message names file and key.
    """
    if isinstance(spec, str):
        spec = expand_shorthand(section.split(".")[0], spec)
    if not isinstance(spec, Mapping):
        raise JobError(
            f"{source}: {section!r} must be a mapping like {{{target_key}: pkg.module.Name, "
            f"args: {{...}}}}, got {spec!r}"
        )
    allowed = (target_key, "args")
    for key in spec:
        if key not in allowed:
            raise JobError(
                f"{source}: unknown key {section}.{key}.{suggest(key, allowed)} "
                f"Allowed: {', '.join(allowed)}"
            )
    target = spec.get(target_key)
    if not isinstance(target, str) or not target:
        raise JobError(
            f"{source}: {section}.{target_key} must be an import path like "
            f"'pkg.module.Name', got {target!r}"
        )
    if section == "data" and "." not in target:
        target = expand_shorthand("data", target)["factory"]
    args = spec.get("args") or {}
    if not isinstance(args, Mapping):
        raise JobError(
            f"{source}: {section}.args must be a mapping of keyword arguments, got {args!r}"
        )
    return {target_key: target, "args": dict(args)}


def _resolve_train(train: Any, source: str, default_output_dir: str) -> dict[str, Any]:
    if train is None:
        train = {}
    if not isinstance(train, Mapping):
        raise JobError(f"{source}: 'train' must be a mapping of TrainConfig options, got {train!r}")
    train = dict(train)
    if train.get("output_dir") is None:
        train["output_dir"] = default_output_dir
    try:
        config = TrainConfig.from_dict(train)
    except (TypeError, ValueError) as exc:
        raise JobError(f"{source}: train: {exc}") from None
    return config.to_dict()
