"""Typed configuration for every rankbrew stage, loaded from YAML profiles.

Each component owns its section's model (``components/<component>/config.py``); this
package composes them into :class:`PipelineConfig` and holds loading, path resolution
and hashing only.

Why pydantic with ``extra="forbid"``: a typo in a YAML profile (``memebrs: 1000``)
must stop the run with the key's path and the fix, not be silently ignored.
Why a content hash: stage artifacts are cached by (stage, config hash, input hashes),
so two configs that mean the same thing must hash the same and any change must not.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from components.analyses.config import (
    ANALYSIS_NAMES,
    AnalysesConfig,
    ContextBudgetAnalysisConfig,
    DataAmountAnalysisConfig,
    ModelSizeAnalysisConfig,
    SteeringAnalysisConfig,
    SweepTrainingConfig,
)
from components.compress.config import CompressConfig
from components.config.run import RayConfig, RunConfig
from components.config_base import ConfigError, StrictModel
from components.data.config import (
    DataConfig,
    MappingSourceConfig,
    MovieLensConfig,
    SplitConfig,
    SyntheticWorldConfig,
)
from components.data.validate import ValidationConfig
from components.evaluate.config import EvaluateConfig
from components.model.factory import ModelConfig
from components.promptify.config import PromptifyConfig, TokenizerConfig
from components.train.config import TrainConfig, TrainDataConfig, TrainingConfig

PROFILE_DIR = Path(__file__).resolve().parents[2] / "pipelines" / "configs"


class PipelineConfig(StrictModel):
    """A whole profile (one YAML file in pipelines/configs/)."""

    run: RunConfig = RunConfig()
    ray: RayConfig = RayConfig()
    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    validation: ValidationConfig = ValidationConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    promptify: PromptifyConfig = PromptifyConfig()
    model: ModelConfig = ModelConfig()
    train: TrainingConfig = TrainingConfig()
    compress: CompressConfig = CompressConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    analyses: AnalysesConfig = AnalysesConfig()


def with_absolute_paths(cfg: PipelineConfig, base: Path | None = None) -> PipelineConfig:
    """Resolve relative paths against ``base`` (default: the current directory).

    Done once on the driver: Ray workers run in other directories, so a relative path
    would mean something else there.
    """
    base = Path(base or Path.cwd())

    def absolute(p: Path) -> Path:
        return p if p.is_absolute() else (base / p).resolve()

    data = cfg.data.model_copy(update={
        "movielens": cfg.data.movielens.model_copy(update={"path": absolute(cfg.data.movielens.path)}),
        "mapping": cfg.data.mapping.model_copy(update={"spec": absolute(cfg.data.mapping.spec)})
        if cfg.data.mapping else None,
    })
    run = cfg.run.model_copy(update={"work_dir": absolute(cfg.run.work_dir)})
    promptify = cfg.promptify.model_copy(update={
        "tasks": [absolute(Path(t)) for t in cfg.promptify.tasks] if cfg.promptify.tasks else cfg.promptify.tasks})
    tokenizer = cfg.tokenizer.model_copy(update={
        "path": absolute(cfg.tokenizer.path) if cfg.tokenizer.path else None})
    model = cfg.model.model_copy(update={
        "checkpoint": absolute(cfg.model.checkpoint) if cfg.model.checkpoint else None})
    ev = cfg.evaluate
    if ev.model is not None and not Path(ev.model).is_absolute() and (base / ev.model).exists():
        ev = ev.model_copy(update={"model": str((base / ev.model).resolve())})  # a local model dir
    return cfg.model_copy(update={"data": data, "run": run, "promptify": promptify, "tokenizer": tokenizer,
                                  "model": model, "evaluate": ev})


def config_hash(model: BaseModel | dict[str, Any], length: int = 16) -> str:
    """Stable content hash: same meaning, same hash, across processes and machines.

    Paths are hashed as written (not resolved), so moving a checkout keeps caches valid.
    """
    payload = model.model_dump(mode="json") if isinstance(model, BaseModel) else model
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  - unknown key '{where}': remove it or fix its spelling "
                         f"(see the fields of {_owner_hint(e['loc'])})")
        else:
            lines.append(f"  - {where}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def _owner_hint(loc: tuple[Any, ...]) -> str:
    model: type[BaseModel] = PipelineConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            break
    return f"{model.__name__}: {', '.join(model.model_fields)}"


def resolve_profile_path(profile: str | Path) -> Path:
    """A profile name (``local``) or a path to a YAML file."""
    p = Path(profile)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    candidate = PROFILE_DIR / f"{profile}.yaml"
    if candidate.exists():
        return candidate
    known = sorted(x.stem for x in PROFILE_DIR.glob("*.yaml"))
    raise ConfigError(f"profile '{profile}' not found: give a YAML path or one of {known}")


def _index(node: list, part: str, dotted: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override {dotted}: '{part}' is not an index of a list of {len(node)} "
                          f"entries (count from 0)")
    return int(part)


def _child(node: Any, part: str, dotted: str) -> Any:
    """One step of a dotted override path: a mapping key (created when missing) or a list
    index (``compress.chain.1.train.kd_weight``)."""
    if isinstance(node, list):
        return node[_index(node, part, dotted)]
    if not isinstance(node, dict):
        raise ConfigError(f"override {dotted}: '{part}' is below a value, not a section")
    return node.setdefault(part, {})


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(node: Any, path: Path, where: str = "") -> Any:
    """``${VAR}`` / ``${VAR:-default}`` in string values, from the environment.

    Why: a cluster profile names what only the cluster knows (``RAY_ADDRESS``,
    ``MLFLOW_TRACKING_URI``, a bucket) without a copy of the profile per cluster. A value
    that expands to the empty string is null (``${RAY_ADDRESS:-}``: start a local Ray).
    """
    if isinstance(node, dict):
        return {k: _expand_env(v, path, f"{where}.{k}" if where else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_env(v, path, f"{where}.{i}") for i, v in enumerate(node)]
    if not isinstance(node, str) or "${" not in node:
        return node

    def sub(m: re.Match) -> str:
        value = os.environ.get(m.group(1))
        if value is None:
            if m.group(2) is None:
                raise ConfigError(f"{path}: {where} reads ${{{m.group(1)}}}, which is not set: "
                                  f"export {m.group(1)}=... or give a default (${{{m.group(1)}:-...}})")
            value = m.group(2)
        return value

    out = _ENV_REF.sub(sub, node)
    return None if out == "" else out


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_profile(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A profile's raw mapping with its ``extends:`` chain merged in (base first)."""
    if path.resolve() in seen:
        chain = " -> ".join(p.name for p in (*seen, path.resolve()))
        raise ConfigError(f"{path}: 'extends' makes a cycle ({chain}): remove one of them")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: extends must be one profile name or YAML path, got {base!r}")
    base_path = Path(base)
    if base_path.suffix in (".yaml", ".yml") and not base_path.is_absolute():
        base_path = path.parent / base_path  # relative to the profile that extends it
    try:
        resolved = resolve_profile_path(base_path if base_path.suffix else base)
    except ConfigError as err:
        raise ConfigError(f"{path}: extends: {err}") from None
    return _deep_merge(_read_profile(resolved, (*seen, path.resolve())), raw)


def load_config(profile: str | Path = "local", overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Load a profile and apply dotted overrides (``{"data.synthetic.members": 500}``).

    A profile may start from another (``extends: local``: its sections, with this file's
    keys on top) and read environment variables (``${RAY_ADDRESS:-}``)."""
    path = resolve_profile_path(profile)
    raw = _expand_env(_read_profile(path), path)
    for dotted, value in (overrides or {}).items():
        node: Any = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = _child(node, part, dotted)
        if isinstance(node, list):
            node[_index(node, leaf, dotted)] = value
        else:
            node[leaf] = value
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, str(path))) from None


__all__ = [
    "ANALYSIS_NAMES",
    "AnalysesConfig",
    "ConfigError",
    "ContextBudgetAnalysisConfig",
    "DataAmountAnalysisConfig",
    "DataConfig",
    "EvaluateConfig",
    "MappingSourceConfig",
    "ModelConfig",
    "ModelSizeAnalysisConfig",
    "MovieLensConfig",
    "PipelineConfig",
    "PromptifyConfig",
    "TokenizerConfig",
    "RayConfig",
    "RunConfig",
    "SplitConfig",
    "SteeringAnalysisConfig",
    "StrictModel",
    "SweepTrainingConfig",
    "SyntheticWorldConfig",
    "TrainConfig",
    "TrainDataConfig",
    "TrainingConfig",
    "ValidationConfig",
    "config_hash",
    "load_config",
    "with_absolute_paths",
]
