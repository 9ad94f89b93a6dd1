"""Cache keys of stages: the config sections a stage depends on, the code behind it
(hashed by content) and the fingerprint of its external inputs.

``key = hash(stage, its config sections, its code, upstream keys, external-input
fingerprint)``; "its code" is the contents of the stage function's module and of the
modules and packages the stage declares in ``Stage.code``, so changed code never reuses
an artifact that older code built. The runner (:mod:`pipelines.dag`) re-exports every
name here.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.config import PipelineConfig, config_hash

if TYPE_CHECKING:  # annotations only: pipelines.dag imports this module
    from pipelines.dag import Stage


def select_config(cfg: PipelineConfig, keys: Iterable[str]) -> dict[str, Any]:
    """The config sections a stage depends on, as plain JSON-able data."""
    dumped = cfg.model_dump(mode="json")
    out: dict[str, Any] = {}
    for dotted in keys:
        node: Any = dumped
        for part in dotted.split("."):
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]  # one entry of a list section (a chain step)
                continue
            if not isinstance(node, dict) or part not in node:
                raise KeyError(f"stage config key '{dotted}' is not a field of the pipeline config")
            node = node[part]
        out[dotted] = node
    return out


def _function_source_file(fn: Callable[..., Any]) -> tuple[str, Path | None]:
    """(module name, source file) of a stage function (partials and wrappers unwrapped)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    fn = inspect.unwrap(fn)
    try:
        source = inspect.getsourcefile(fn)
    except TypeError:  # a builtin or a callable object without a source file
        source = None
    return getattr(fn, "__module__", None) or "<unknown>", Path(source) if source else None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


#: A component package's settings module (its pydantic section of ``PipelineConfig``): left
#: out of a package's code hash, because what it means for a stage's output is the
#: validated values, which the key holds already (``select_config``); hashing the file too
#: would rerun cpt/sft/align over an edited field description.
CONFIG_MODULE = "config.py"


def code_files(stage: Stage) -> dict[str, str]:
    """``{file label: sha256 of its contents}`` for the code behind ``stage``: the stage
    function's module plus every module and package (all ``.py`` files below it) named in
    ``stage.code`` (a package's ``config.py`` excepted: :data:`CONFIG_MODULE`). Exact contents, not mtimes: a checkout or ``touch`` changes nothing,
    any edit (comments included) reruns the stage. Labels are module-relative, so the same
    code in another checkout gives the same key.

    Raises ``ValueError`` naming the stage when a declared name cannot be found."""
    module, source = _function_source_file(stage.run)
    out: dict[str, str] = {}
    if source is not None and source.is_file():
        out[f"{module} (stage module)"] = _sha256(source)
    for name in stage.code:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            raise ValueError(
                f"stage '{stage.name}': code dependency '{name}' is not an importable module or "
                f"package; fix the name in its Stage(code=...) (dotted, e.g. 'components.data')")
        if spec.submodule_search_locations is not None:  # a package, namespace or regular
            for root in sorted({Path(p) for p in spec.submodule_search_locations}):
                for f in sorted(root.rglob("*.py")):
                    if "__pycache__" not in f.parts and f.name != CONFIG_MODULE:
                        out[f"{name}/{f.relative_to(root).as_posix()}"] = _sha256(f)
        elif spec.origin and Path(spec.origin).is_file():
            out[name] = _sha256(Path(spec.origin))
        else:
            raise ValueError(f"stage '{stage.name}': code dependency '{name}' has no source file "
                             f"({spec.origin}); declare Python source modules only")
    return dict(sorted(out.items()))


def stage_key(stage: Stage, cfg: PipelineConfig, upstream: Mapping[str, str],
              code: Mapping[str, str] | None = None) -> str:
    """hash(stage name and version, its config sections, its code, upstream keys, external
    fingerprint). ``code`` is :func:`code_files` of the stage, computed when not given."""
    payload = {
        "stage": stage.name,
        "version": stage.version,
        "config": select_config(cfg, stage.config_keys),
        "code": config_hash(dict(code if code is not None else code_files(stage))),
        "inputs": dict(sorted(upstream.items())),
        "external": stage.fingerprint(cfg) if stage.fingerprint else None,
    }
    return config_hash(payload)


def fingerprint_paths(paths: Iterable[Path]) -> str:
    """Cheap content identity of source files: path, size and modification time."""
    items = []
    for p in sorted(Path(x) for x in paths):
        st = p.stat()
        items.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return config_hash({"files": items})
