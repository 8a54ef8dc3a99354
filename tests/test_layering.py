"""The package's layers only look down (docs/design.md#layout): every import of every module."""

from __future__ import annotations

import ast
from pathlib import Path

import resdet

PACKAGE = Path(resdet.__file__).parent
# Lowest first. A module may import its own part and the layers below; the parts of one layer
# (models, evaluation, engine) do not import each other.
LAYERS = [
    {"registry", "files", "config"},
    {"data"},
    {"models", "evaluation", "engine"},
    {"experiments"},
    {"cli"},
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}
# The modules of the command line, one part.
CLI_MODULES = {"cli", "cli_common", "cli_train", "cli_eval", "cli_export", "viz", "__main__"}


def part_of(module: str) -> str:
    """``resdet.data.coco`` -> ``data``; ``resdet.cli_train`` -> ``cli``."""
    name = module.split(".")[1]
    return "cli" if name in CLI_MODULES else name


def resdet_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ``resdet.*`` import in ``path``, nested ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("resdet.")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("resdet."):
            found.append((node.lineno, node.module))
    return found


def test_no_module_imports_a_higher_layer_or_a_peer() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent)
        if relative == Path("resdet/__init__.py"):
            continue  # the package's public names, re-exported from models
        own = part_of(".".join(relative.with_suffix("").parts))
        assert own in RANK, f"{relative}: add its part {own!r} to LAYERS"
        for line, module in resdet_imports(path):
            other = part_of(module)
            if other != own and RANK[other] >= RANK[own]:
                wrong.append(f"{relative}:{line} imports {module}")
    assert not wrong, "imports that do not look down:\n" + "\n".join(wrong)


def test_the_walk_sees_nested_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from resdet.cli_common import console\nimport resdet.data\n")
    assert sorted(resdet_imports(source)) == [(2, "resdet.cli_common"), (3, "resdet.data")]
