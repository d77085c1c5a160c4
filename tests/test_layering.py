"""The direction of imports (design.md section 1), read from the source: jobs -> pipelines -> (operators,
storage); operators never import storage, pipelines or jobs; storage never imports pipelines or jobs;
and no feature package of pipelines (index, fewshot, evaluation) imports another feature's job modules.

Every import counts, also those inside functions (the lazy ones that keep a process light) and those
under TYPE_CHECKING: a dependency is one, wherever it is written.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.paths import REPO

LAYERS = ("operators", "storage", "pipelines", "jobs")
# What each layer must never import.
FORBIDDEN = {
    "operators": {"storage", "pipelines", "jobs"},
    "storage": {"pipelines", "jobs"},
    "pipelines": {"jobs"},
    "jobs": set(),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(("maskdex",) + (parts[:-1] if parts[-1] == "__init__" else parts))


def imported_modules(source: str, module: str) -> set[str]:
    """The maskdex modules a module's source imports: `from a.b import c` gives a.b and a.b.c (c may be
    a module or a name in a.b; the callers only compare prefixes), relative imports resolved."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")[: -node.level]
                base = ".".join(package + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] == "maskdex"}


def _sources() -> dict[str, tuple[Path, str]]:
    return {module_name(path): (path, path.read_text()) for layer in LAYERS for path in sorted((REPO / layer).rglob("*.py"))}


def _imports() -> dict[str, set[str]]:
    return {module: imported_modules(source, module) for module, (_, source) in _sources().items()}


def _layer(module: str) -> str:
    return module.split(".")[1]


def _feature(module: str) -> str | None:
    """The feature package of a pipelines module (pipelines/<feature>/...), None for pipelines/*.py and common."""
    parts = module.split(".")
    if len(parts) < 4 or parts[1] != "pipelines" or parts[2] == "common" or not (REPO / "pipelines" / parts[2]).is_dir():
        return None
    return parts[2]


def test_the_reader_sees_every_kind_of_import():
    source = ("import maskdex.storage.tables\nfrom maskdex.operators.rns import method\nimport numpy\n"
              "def lazy():\n    from maskdex.jobs.cli import main\n"
              "from . import sibling\nfrom ..common.decode import decode_image\n")
    assert imported_modules(source, "maskdex.pipelines.index.stages") == {
        "maskdex.storage.tables", "maskdex.operators.rns", "maskdex.operators.rns.method", "maskdex.jobs.cli",
        "maskdex.jobs.cli.main", "maskdex.pipelines.index", "maskdex.pipelines.index.sibling",
        "maskdex.pipelines.common.decode", "maskdex.pipelines.common.decode.decode_image"}


def test_imports_point_down_the_layers():
    imports = _imports()
    assert len(imports) > 100 and {_layer(module) for module in imports} == set(LAYERS)
    wrong = sorted(f"{module} imports {target}" for module, targets in imports.items() for target in targets
                   if _layer(target) in FORBIDDEN[_layer(module)])
    assert not wrong, "imports against the layering (design.md section 1):\n" + "\n".join(wrong)


def test_no_feature_imports_another_features_modules():
    """A feature package (pipelines/index, fewshot, evaluation) is its jobs and their stages; what two of them
    share lives in pipelines/common or in pipelines/*.py (search, rerank, export)."""
    imports = _imports()
    features = {_feature(module) for module in imports} - {None}
    assert {"index", "fewshot", "evaluation"} <= features
    wrong = sorted(f"{module} imports {target}" for module, targets in imports.items() for target in targets
                   if _feature(module) is not None and _feature(target) not in (None, _feature(module)))
    assert not wrong, "a feature depends on another feature's job modules; move what they share to " \
        "pipelines/common:\n" + "\n".join(wrong)
