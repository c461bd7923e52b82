"""`transform/` is pure: it imports nothing from `source/` (reading) or `sinks/` (writing), even for types."""

import ast
from pathlib import Path

import pulse.transform

FORBIDDEN = ("pulse.source", "pulse.sinks")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_transform_imports_neither_source_nor_sinks():
    folder = Path(pulse.transform.__file__).parent
    modules = sorted(folder.glob("*.py"))
    assert len(modules) >= 4  # the folder was found
    bad = {p.name: m for p in modules for m in _imports(p) if m.startswith(FORBIDDEN)}
    assert bad == {}
