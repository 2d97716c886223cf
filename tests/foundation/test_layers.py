"""Dependencies point down: analysis → proposals → projects → sources, and analysis →
agents. An app imports (at any depth of a module: top level or inside a function) only the
apps below it; `tasktracker` is the composition root and imports everyone."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BELOW = {
    "analysis": {"proposals", "projects", "sources", "agents"},
    "proposals": {"projects", "sources"},
    "projects": {"sources"},
    "agents": set(),
    "sources": set(),
}


def imported_apps(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
    return found & set(BELOW)


def modules_of(app: str) -> list[Path]:
    return [p for p in (ROOT / app).rglob("*.py") if "migrations" not in p.relative_to(ROOT).parts]


@pytest.mark.parametrize("app", sorted(BELOW))
def test_an_app_imports_only_the_apps_below_it(app: str) -> None:
    upward = {
        str(path.relative_to(ROOT)): sorted(imported_apps(path) - BELOW[app] - {app})
        for path in modules_of(app)
    }
    assert {module: apps for module, apps in upward.items() if apps} == {}


def test_the_contract_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "sneaky.py"
    module.write_text("def f():\n    from analysis.models import AnalysisRun\n", encoding="utf-8")
    assert imported_apps(module) == {"analysis"}


@pytest.mark.parametrize("app", sorted(BELOW))
def test_services_queue_tasks_by_name_without_importing_them(app: str) -> None:
    """An app's tasks call its services; its services queue tasks by name, never importing
    the tasks module (which would make the two import each other)."""
    services = [p for p in modules_of(app) if p.stem == "services" or p.parent.name == "services"]
    importing = [
        str(path.relative_to(ROOT))
        for path in services
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if (isinstance(node, ast.ImportFrom) and node.module in (app, f"{app}.tasks"))
        and (node.module == f"{app}.tasks" or any(alias.name == "tasks" for alias in node.names))
    ]
    assert importing == []
