"""The wheel installs everything under `sdcd`: nothing called plain `callbacks` or `data_modules`."""

import subprocess
import sys
import zipfile

from conftest import ROOT


def test_wheel_contents(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("sdcd-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"sdcd", next(t for t in top if t.endswith(".dist-info"))}, top
    for module in ["sdcd/model.py", "sdcd/flows.py", "sdcd/cli.py", "sdcd/data_modules/base.py",
                   "sdcd/data_modules/dsprites.py", "sdcd/callbacks/shuffle.py"]:
        assert module in names
    assert not any(n.startswith(("callbacks/", "data_modules/", "src/", "tests/")) for n in names)


def test_editable_install_maps_subpackages():
    import sdcd.callbacks.shuffle
    import sdcd.data_modules.base

    assert sdcd.data_modules.base.__file__.startswith(str(ROOT / "data_modules"))
    assert sdcd.callbacks.shuffle.__file__.startswith(str(ROOT / "callbacks"))
    out = subprocess.run([sys.executable, "-c", "import callbacks"], capture_output=True, cwd="/")
    assert out.returncode != 0  # no top-level `callbacks` package is installed


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "sdcd", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "fit" in out.stdout


def _module_imports() -> dict[str, set[str]]:
    """sdcd module → the sdcd modules it imports at module level (read from the source, not run)."""
    import ast

    roots = {"sdcd": ROOT / "src" / "sdcd", "sdcd.callbacks": ROOT / "callbacks",
             "sdcd.data_modules": ROOT / "data_modules"}
    graph: dict[str, set[str]] = {}
    for package, folder in roots.items():
        for path in folder.glob("*.py"):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            tree = ast.parse(path.read_text())
            deps = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sdcd"):
                    deps |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
                elif isinstance(node, ast.Import):
                    deps |= {a.name for a in node.names if a.name.startswith("sdcd")}
            graph[name] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def test_no_import_cycles_and_no_deferred_sdcd_imports():
    import ast

    for folder in (ROOT / "src" / "sdcd", ROOT / "callbacks", ROOT / "data_modules"):
        for path in folder.glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    inner = [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
                    names = [getattr(n, "module", None) or n.names[0].name for n in inner]
                    assert not [n for n in names if n and n.startswith("sdcd")], f"{path.name}:{node.name}"
    graph = _module_imports()
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in graph[m]:
            assert state.get(d) != 1, "import cycle: " + " → ".join([*path, m, d])
            if d not in state:
                visit(d, [*path, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])
    assert len(graph) > 30 and graph["sdcd.model"] >= {"sdcd.interface", "sdcd.static", "sdcd.dynamic"}
