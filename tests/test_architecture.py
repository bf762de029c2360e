"""The layout's rules and the public API: layers import only downwards, no cycles, the README's
Python example runs as written, and MLX imported before the package is reported, once."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "entropix_mlx"

# What each layer may not import (DESIGN.md and docs/architecture.md). `cli` may import anything.
FORBIDDEN = {
    "tokenize": {"model", "engine", "chat", "lab", "serve", "ui", "cli"},
    "model": {"engine", "chat", "lab", "serve", "ui", "cli"},
    "engine": {"chat", "lab", "serve", "ui", "cli"},
    "lab": {"chat", "serve", "ui", "cli"},
    "serve": {"chat", "lab", "ui", "cli"},
    "ui": {"chat", "serve", "cli"},
    "chat": {"lab", "serve", "cli"},
    "errors": {"model", "tokenize", "engine", "chat", "lab", "serve", "ui", "cli"},
}
CLI_SHARED = {"entropix_mlx.cli", "entropix_mlx.cli.app"}  # what command modules may import


def module_name(path: Path, root: Path) -> str:
    parts = path.with_suffix("").relative_to(root).parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path) -> set[str]:
    """Every entropix_mlx module `path` imports: `import`, `from … import` (relative too), and
    `importlib.import_module` with a literal name."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(max(node.level - 1, 0)):
                base = base.rpartition(".")[0]
            module = node.module or ""
            target = (f"{base}.{module}" if module else base) if node.level else module
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names}
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            target = node.args[0].value
            if target.startswith("."):
                anchor = package
                for _ in range(len(target) - len(target.lstrip(".")) - 1):
                    anchor = anchor.rpartition(".")[0]
                target = f"{anchor}.{target.lstrip('.')}"
            found.add(target)
    return {m for m in found if m.startswith("entropix_mlx")}


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in (root / "entropix_mlx").rglob("*.py")}
    return {m: {t for t in imports_of(p, root) if t in files and t != m} for m, p in files.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def upward_imports(g: dict[str, set[str]]) -> list[str]:
    return [
        f"{m} imports {t}"
        for m, targets in g.items()
        for t in targets
        if layer(t) in FORBIDDEN.get(layer(m), set())
    ]


def command_cross_imports(g: dict[str, set[str]]) -> list[str]:
    commands = {m for m in g if layer(m) == "cli" and m not in CLI_SHARED}
    return [f"{m} imports {t}" for m in commands for t in g[m] if t in commands]


def cycles(g: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    found: list[str] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(g[m]):
            if state.get(t) == 1:
                found.append(" -> ".join([*path[path.index(t) :], t]))
            elif t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    return found


def test_no_layer_imports_upwards() -> None:
    assert not (bad := upward_imports(graph())), "\n".join(bad)


def test_cli_command_modules_import_only_the_shared_module() -> None:
    assert not (bad := command_cross_imports(graph())), "\n".join(bad)


def test_no_import_cycles() -> None:
    assert not (found := cycles(graph())), "\n".join(found)


def test_the_checks_catch_upward_imports_cycles_and_importlib(tmp_path: Path) -> None:
    """The same checks on a made-up tree: each kind of violation is reported."""
    files = {
        "entropix_mlx/__init__.py": "",
        "entropix_mlx/model/__init__.py": "",
        "entropix_mlx/model/llama.py": "import importlib\n"
        "importlib.import_module('..engine.gen', __package__)\n",
        "entropix_mlx/engine/__init__.py": "",
        "entropix_mlx/engine/gen.py": "from ..model import llama\nfrom . import rec\n",
        "entropix_mlx/engine/rec.py": "from .gen import x\n",
        "entropix_mlx/cli/__init__.py": "",
        "entropix_mlx/cli/app.py": "",
        "entropix_mlx/cli/run.py": "from .app import app\nfrom .chat import chat\n",
        "entropix_mlx/cli/chat.py": "from .app import app\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    g = graph(tmp_path)
    assert upward_imports(g) == ["entropix_mlx.model.llama imports entropix_mlx.engine.gen"]
    assert command_cross_imports(g) == ["entropix_mlx.cli.run imports entropix_mlx.cli.chat"]
    assert {c.split(" -> ")[0] for c in cycles(g)} >= {"entropix_mlx.engine.gen"}


def run_python(code: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def readme_python_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readme_python_example_runs_verbatim(tmp_path: Path) -> None:
    result = run_python(readme_python_example(), cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "the example printed no answer"
    assert "Warning" not in result.stderr


def test_the_public_api_gives_functions_whatever_was_imported_first() -> None:
    code = (
        "import entropix_mlx as e\n"
        "import entropix_mlx.engine.generate, entropix_mlx.model.load\n"
        "import entropix_mlx.engine.sampler\n"
        "from entropix_mlx import load, load_tokenizer, generate, make_sampler, SamplerConfig\n"
        "import inspect\n"
        "funcs = (load, load_tokenizer, generate, make_sampler)\n"
        "assert all(inspect.isfunction(f) for f in funcs)\n"
        "assert inspect.isfunction(e.generate) and inspect.isclass(SamplerConfig)\n"
        "print('ok')\n"
    )
    result = run_python(code)
    assert result.returncode == 0 and result.stdout == "ok\n", result.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the BLAS set-up is Linux-only")
def test_importing_mlx_first_warns_once_and_says_how_to_fix_it() -> None:
    code = (
        "import mlx.core\n"
        "import entropix_mlx\n"
        "import entropix_mlx.model.load, entropix_mlx.engine.generate\n"
        "from entropix_mlx.model import backend\n"
        "print(backend.blas_status())\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "RuntimeWarning" in line]
    assert len(warnings) == 1, result.stderr
    assert "import entropix_mlx first" in warnings[0]
    assert result.stdout.startswith("reference BLAS (mlx.core was imported before entropix_mlx")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the BLAS set-up is Linux-only")
def test_importing_the_package_first_sets_up_the_blas_without_importing_mlx() -> None:
    code = (
        "import sys, warnings\nwarnings.simplefilter('error')\n"
        "import entropix_mlx\nprint('mlx' in sys.modules)\n"
        "import mlx.core\nfrom entropix_mlx.model import backend\nprint(backend.blas_status())\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "False"
    assert not lines[1].startswith("reference BLAS (mlx.core was imported")


def test_help_imports_no_mlx() -> None:
    code = (
        "import sys\nfrom entropix_mlx import cli\nsys.argv = ['entropix', '--help']\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
        "print('mlx.core' in sys.modules, file=sys.stderr)\n"
    )
    result = run_python(code)
    assert result.stderr.strip().splitlines()[-1] == "False", result.stderr
