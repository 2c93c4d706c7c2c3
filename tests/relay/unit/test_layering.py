"""Inside `relay/` imports run one way (docs/architecture.md): a lower module never names a
higher one, not even for type checking; it defines the small protocol it needs instead."""

from __future__ import annotations

import ast
from pathlib import Path

import relay

RELAY = Path(relay.__file__).parent

# Highest first. A module may import modules of lower layers only (and its own subpackage).
LAYERS: list[set[str]] = [
    {"sfu"},
    {"room"},
    {"participant"},
    {"probe"},
    {"forwarder", "_aiortc"},
    {"producer"},
    {"negotiation", "rtp", "stats", "settings", "reasons", "estimator"},
    {"candidates", "adaptation", "coalesce"},
]
# `_aiortc` (aiortc's private internals) is for the participant and the relay's start-up only.
AIORTC_USERS = {"sfu", "participant"}


def layer_of(module: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if module in names)


def relay_imports(path: Path) -> set[str]:
    """The relay modules `path` imports (first component below `relay.`), anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "relay":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("relay."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("relay."))
    return found


def own_module(path: Path) -> str:
    relative = path.relative_to(RELAY)
    return relative.parts[0] if len(relative.parts) > 1 else path.stem


def test_every_relay_module_has_a_layer() -> None:
    modules = {own_module(p) for p in RELAY.rglob("*.py")} - {"__init__"}
    assert modules == set().union(*LAYERS)


def test_imports_inside_the_relay_point_down() -> None:
    wrong: list[str] = []
    for path in sorted(RELAY.rglob("*.py")):
        module = own_module(path)
        if module == "__init__":
            assert relay_imports(path) == set(), "relay/__init__.py stays empty"
            continue
        for imported in relay_imports(path) - {module}:
            if layer_of(imported) <= layer_of(module):
                wrong.append(f"{path.relative_to(RELAY.parent)} imports relay.{imported}")
            if imported == "_aiortc" and module not in AIORTC_USERS:
                wrong.append(f"{path.relative_to(RELAY.parent)} reaches into relay._aiortc")
    assert wrong == []


def test_the_checker_sees_type_checking_imports(tmp_path: Path) -> None:
    sample = tmp_path / "producer.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from relay.forwarder import F\n"
    )
    assert relay_imports(sample) == {"forwarder"}
