"""Generic code acts on what sinks declare, never on their names (issue 15's closed contract).

No string constant equal to a registered sink kind, no `hasattr`, and no
`@` (the instance names' separator) in runtime/, bus/, transform/ or cli/.
"""

import ast
from pathlib import Path

import pulse
from pulse.sinks import REGISTRY

GENERIC = ("runtime", "bus", "transform", "cli")


def _findings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    in_fstrings = {id(c) for j in ast.walk(tree) if isinstance(j, ast.JoinedStr) for c in j.values}  # message text
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in in_fstrings and (
                node.value in REGISTRY or node.value == "@"):
            out.append(f"{path.name}:{node.lineno} {node.value!r}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "hasattr":
            out.append(f"{path.name}:{node.lineno} hasattr")
    return out


def test_generic_packages_name_no_sink():
    root = Path(pulse.__file__).parent
    files = [p for pkg in GENERIC for p in sorted((root / pkg).glob("*.py"))]
    assert len(files) > 20  # the packages were found
    assert [f for p in files for f in _findings(p)] == []
