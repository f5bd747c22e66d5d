"""Imports point down: the commands (and cli.py) use training and inference, which use the core modules,
which use neither; at module level and inside functions alike."""

from __future__ import annotations

import ast
from pathlib import Path

import unetr_cli

PACKAGE = Path(unetr_cli.__file__).parent
# The service (serve) runs inference and training does not: it sits between the commands and inference.
LAYERS = {"__main__": 2, "commands": 2, "cli": 2, "serve": 1.5, "training": 1, "inference": 1}  # the rest: 0


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0


def _imports() -> list[tuple[str, str]]:
    """(importing module, imported unetr module) for every import in the package."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(("unetr_cli", *path.relative_to(PACKAGE).with_suffix("").parts))
        module = module.removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("unetr_cli"):
                names = (
                    [node.module]
                    if node.module != "unetr_cli"
                    else [f"unetr_cli.{a.name}" for a in node.names]
                )
                found += [(module, name) for name in names]
            elif isinstance(node, ast.Import):
                found += [(module, a.name) for a in node.names if a.name.startswith("unetr_cli")]
    return found


def test_imports_point_down():
    upward = [(a, b) for a, b in _imports() if _layer(b) > _layer(a)]
    assert upward == []


def test_the_rule_is_checked_on_real_imports():
    imports = _imports()
    assert ("unetr_cli.commands.inference", "unetr_cli.inference.batch") in imports  # downward, found
    assert any(_layer(a) == 1 and _layer(b) == 0 for a, b in imports)
