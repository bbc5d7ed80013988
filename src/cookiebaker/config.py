"""Typed stage configs: ``params.yaml`` section + command-line overrides → one validated object.

Every stage has a pydantic model whose attribute docstrings document its options. Unknown keys and
bad values fail together, in one :class:`~cookiebaker.errors.ConfigError` that names every bad option.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from cookiebaker.errors import ConfigError
from cookiebaker.io import atomic_path

DEFAULT_PARAMS = Path("params.yaml")


class StageConfig(BaseModel):
    """Base of every stage config: unknown options are errors, field docstrings are the documentation (and the
    command line's help: ``cookiebaker COMMAND --help``)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, use_attribute_docstrings=True)


C = TypeVar("C", bound=StageConfig)


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"unknown option '{where}'"
    message = error["msg"].removeprefix("Value error, ")
    return f"'{where}': {message}" if where else message


def _without(values: dict[str, Any], locations: list[tuple]) -> dict[str, Any]:
    """A copy of nested ``values`` without the keys at ``locations``."""
    values = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    for loc in locations:
        holder: Any = values
        for part in loc[:-1]:
            holder = holder.get(part, {}) if isinstance(holder, dict) else {}
        if isinstance(holder, dict):
            holder.pop(loc[-1], None)
    return values


def _merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``overrides``, nested sections key by key (a flag for one privacy option keeps the
    params file's others)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_params(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Read a params file. ``None`` means ``params.yaml`` in the working directory, if there is one."""
    if path is None:
        if not DEFAULT_PARAMS.is_file():
            return {}
        path = DEFAULT_PARAMS
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read params file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"params file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"params file {path} must hold a mapping of stage sections")
    return data


def build_config(
    cls: type[C],
    section: str,
    params: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> C:
    """Validate ``params[section]`` updated with the overrides that are not ``None``."""
    values = (params or {}).get(section) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"params section '{section}' must be a mapping, got {type(values).__name__}")
    merged = _merged(values, {k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return cls.model_validate(merged)
    except ValidationError as exc:
        errors = exc.errors()
    problems = [_describe(e) for e in errors]
    located = [tuple(e["loc"]) for e in errors if e["loc"]]
    if located and len(located) == len(errors):
        # Bad fields stop pydantic before the checks that combine options: run those too, without the bad
        # fields, so that one message names every bad option.
        try:
            cls.model_validate(_without(merged, located))
        except ValidationError as exc:
            problems += [_describe(e) for e in exc.errors() if not e["loc"]]
    raise ConfigError(f"invalid {section} config: {'; '.join(problems)}")


def save_resolved_config(config: StageConfig, target: str | os.PathLike[str]) -> None:
    """Write the config exactly as the stage used it (YAML), atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True))


def config_path_for(output: str | os.PathLike[str]) -> Path:
    """Where the resolved config of a file output lives: ``data/SFW.parquet`` → ``data/SFW.parquet.config.yaml``."""
    output = Path(output)
    return output.with_name(output.name + ".config.yaml")
