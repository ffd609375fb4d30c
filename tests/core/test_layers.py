"""The library's layers (README, "Development"): a module imports only from its own
subpackage or from a lower layer, the torch-free core loads without torch, and no module
grows past what one reading takes."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
from conftest import REPO

SRC = REPO / "src" / "llm4rec"
# Lowest first; a subpackage (or top-level module) may import only from lower layers and itself.
LAYERS = {
    "core": 0,
    "data": 1,
    "graph": 2,
    "metrics": 3,
    "model": 4,
    "baselines": 4,
    "train": 5,
    "report": 6,
    "cli": 7,
}
MAX_LINES = 450
# What the Snakefile and its rules import at start: none of it may load torch.
TORCH_FREE = (
    "llm4rec.core.config",
    "llm4rec.core.constants",
    "llm4rec.core.hashing",
    "llm4rec.core.locking",
    "llm4rec.core.logs",
    "llm4rec.core.memory",
    "llm4rec.data.download",
    "llm4rec.data.preprocess",
    "llm4rec.graph.relation",
    "llm4rec.model.backbone_store",
    "llm4rec.model.checks",
    "llm4rec.model.prompts",
    "llm4rec.report.provenance",
    "llm4rec.report.tables",
)


def modules() -> list[tuple[str, ast.Module]]:
    return [
        (".".join(p.relative_to(SRC.parent).with_suffix("").parts), ast.parse(p.read_text())) for p in SRC.rglob("*.py")
    ]


def imported(tree: ast.Module, module: str) -> set[str]:
    """Every llm4rec module a module imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("llm4rec")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{module}: relative import (write llm4rec.<layer>.<module>)")
            if node.module and node.module.startswith("llm4rec"):
                found.add(node.module)
    return found


def layer(module: str) -> str | None:
    """`llm4rec.model.encoding` -> `model`; the package root itself has no layer."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] != "__init__" else None


def test_every_subpackage_has_a_layer():
    found = {layer(m) for m, _ in modules()} - {None}
    assert found == set(LAYERS), f"place each subpackage in LAYERS (and the README): {found ^ set(LAYERS)}"


def test_imports_go_down_the_layers_only():
    wrong = []
    for module, tree in modules():
        source = layer(module)
        for target in imported(tree, module):
            to = layer(target)
            if source is None or to is None or to == source:
                continue
            if LAYERS[to] >= LAYERS[source]:
                wrong.append(f"{module} imports {target} ({to}, layer {LAYERS[to]} >= {source}, {LAYERS[source]})")
    assert not wrong, "\n".join(wrong)


def test_layer_check_sees_an_upward_import():
    tree = ast.parse("def f():\n    from llm4rec.train.loop import pretrain\n")
    assert imported(tree, "llm4rec.core.x") == {"llm4rec.train.loop"}
    assert LAYERS[layer("llm4rec.train.loop")] > LAYERS[layer("llm4rec.core.x")]


def test_no_module_over_the_limit():
    long = {}
    for p in SRC.rglob("*.py"):
        n = len(p.read_text().splitlines())
        if n > MAX_LINES:
            long[str(p.relative_to(SRC))] = n
    assert not long, f"modules over {MAX_LINES} lines: {long}"


@pytest.mark.parametrize("module", TORCH_FREE)
def test_core_imports_without_torch(module):
    code = f"import sys, {module}; bad = [m for m in ('torch', 'transformers') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"{module} loads {out.strip()}"
