"""The layering of docs/design.md ("Where things live"), checked on the source: no import cycle,
no stage reaching into another's internals, no pointer to a document outside the repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "infini_onnx"
STAGES = ("export", "quantize", "runtime", "bench", "cli", "model", "serve", "convert")


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every `from infini_onnx... import name` and `import infini_onnx...`,
    at any depth (imports inside functions count)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("infini_onnx"):
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, "") for a in node.names if a.name.startswith("infini_onnx")]
    return found


def dependencies(module: str) -> set[str]:
    """The modules `module` imports, and the packages they run on the way (not its own)."""
    out = set()
    for target, name in imports(MODULES[module]):
        full = f"{target}.{name}" if f"{target}.{name}" in MODULES else target
        parts = full.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in MODULES and prefix != module and not module.startswith(prefix + "."):
                out.add(prefix)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in STAGES else None


def test_no_import_cycle():
    graph = {m: dependencies(m) for m in MODULES}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_stage_imports_a_private_name_of_another():
    for module, path in MODULES.items():
        for target, name in imports(path):
            if stage_of(target) != stage_of(module):
                assert not name.startswith("_"), f"{module} imports {target}.{name}"
                assert not any(p.startswith("_") for p in target.split(".")), (module, target)


def test_quantize_and_runtime_do_not_import_the_exporter():
    for module, path in MODULES.items():
        if stage_of(module) in ("quantize", "runtime"):
            targets = [t for t, _ in imports(path)]
            assert not [t for t in targets if t.startswith("infini_onnx.export")], module


def test_the_runtime_imports_only_the_ground_floor_and_itself():
    allowed = ("infini_onnx.runtime", "infini_onnx.config", "infini_onnx.errors",
               "infini_onnx.devices", "infini_onnx.stepgraph", "infini_onnx.atomic")  # fmt: skip
    for module, path in MODULES.items():
        if stage_of(module) == "runtime":
            for target, _ in imports(path):
                assert target.startswith(allowed), f"{module} imports {target}"


def test_no_reference_to_a_document_outside_the_repository():
    pattern = re.compile(r"\bSPEC(\.md)?\b|\bNOTES(\.md)?\b")
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "docs").glob("*.md")]
    files += [ROOT / "README.md", *(ROOT / "benchmarks").glob("*.py")]
    for path in files:
        if path == Path(__file__):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not pattern.search(line), f"{path.relative_to(ROOT)}:{number}: {line.strip()}"


def test_the_state_is_spelled_in_one_module():
    """Every state tensor, its output partner and the position input are named only in
    stepgraph/state_spec.py (with the shapes and the commit rule); the other modules read the
    spec. A third format version is then a new spec, not edits in a dozen files."""
    from infini_onnx.stepgraph.state_spec import SPECS

    names = {"position"}
    for spec in SPECS.values():
        names |= {*spec.names, *spec.output_names[1:]}  # not "logits", an output like any
    spelled = []
    for module, path in MODULES.items():
        if module == "infini_onnx.stepgraph.state_spec":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                spelled.append(f"{module}:{node.lineno} {node.value!r}")
    assert spelled == [], spelled
