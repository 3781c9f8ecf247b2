"""The layers of docs/architecture.md, checked on the source: the API layer reaches
storage only through core, and a plugin imports nothing of the server but
`homeserver.plugins`.

The checks read imports with `ast` (so imports under TYPE_CHECKING or inside
functions count too) and also catch `something.storage` attribute access in the
API layer (`hs.storage.accounts...`), which needs no import.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(tree: ast.AST, module: str) -> set[str]:
    """Every module an import statement in `tree` names; `from a import b` also counts
    as `a.b`, since b may be a module. `module` resolves relative imports."""
    package = module.rsplit(".", 1)[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def storage_violations(source: str, module: str) -> list[str]:
    """What in an API module reaches storage: imports of it, or `<x>.storage` attributes."""
    tree = ast.parse(source)
    found = [
        f"imports {name}"
        for name in sorted(imported_modules(tree, module))
        if name == "homeserver.storage" or name.startswith("homeserver.storage.")
    ]
    found.extend(
        f"uses .storage (line {node.lineno})"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr == "storage"
    )
    return found


def plugin_violations(source: str, module: str) -> list[str]:
    """Imports of the server other than its plugin interface, `homeserver.plugins`."""
    names = imported_modules(ast.parse(source), module)
    return sorted(
        f"imports {name}"
        for name in names
        if (name == "homeserver" or name.startswith("homeserver."))
        and name != "homeserver"  # `from homeserver import x` is judged by its `homeserver.x`
        and not (name == "homeserver.plugins" or name.startswith("homeserver.plugins."))
    )


def modules_under(directory: Path) -> list[tuple[Path, str]]:
    out = []
    for path in sorted(directory.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        # An __init__ resolves relative imports against itself, a module against its package.
        name = ".".join(parts) + (".__init__" if path.name == "__init__.py" else "")
        out.append((path, name))
    return out


def test_the_api_layer_reaches_storage_only_through_core() -> None:
    modules = modules_under(ROOT / "homeserver" / "api")
    assert len(modules) > 10  # the walk found the handlers
    problems = {
        str(path.relative_to(ROOT)): found
        for path, name in modules
        if (found := storage_violations(path.read_text(), name))
    }
    assert problems == {}


def test_plugins_import_only_the_plugin_interface() -> None:
    modules = modules_under(ROOT / "plugins")
    assert any(name.startswith("plugins.media") for _, name in modules)
    problems = {
        str(path.relative_to(ROOT)): found
        for path, name in modules
        if (found := plugin_violations(path.read_text(), name))
    }
    assert problems == {}


# The checks themselves: each form of a violation is caught ---------------------------------


def test_the_storage_check_catches_every_form() -> None:
    api = "homeserver.api.client.rooms"
    for source in (
        "import homeserver.storage\n",
        "import homeserver.storage.rooms as r\n",
        "from homeserver.storage.rooms import AliasExists\n",
        "from homeserver import storage\n",
        "from homeserver.storage import Storage\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from homeserver.storage import Storage\n",
        "def f():\n    from homeserver.storage.events import StoredEvent\n",
        "from ...storage import rooms\n",
        "async def f(hs):\n    return await hs.storage.rooms.public_rooms()\n",
    ):
        assert storage_violations(source, api), source
    for source in (
        "from homeserver.core.directory import DirectoryService\n",
        "from homeserver.api.http import Router\n",
        "import homeserver.storagebox\n",
        "from . import login\n",
    ):
        assert storage_violations(source, api) == [], source


def test_the_plugin_check_catches_every_form() -> None:
    plugin = "plugins.media.repository"
    for source in (
        "from homeserver.core.rooms import RoomService\n",
        "import homeserver.storage\n",
        "from homeserver import core\n",
        "from homeserver.errors import MatrixError\n",
        "def f():\n    import homeserver.server\n",
    ):
        assert plugin_violations(source, plugin), source
    for source in (
        "from homeserver.plugins import PluginApi\n",
        "from homeserver import plugins\n",
        "from plugins.media import db\n",
        "from . import db\n",
        "import twisted.internet\n",
    ):
        assert plugin_violations(source, plugin) == [], source


# Database drivers outside storage/: only to recognise their errors (a full disk).
DRIVER_USERS_FOR_ERRORS = {"homeserver/disk_full.py"}


def test_only_storage_talks_to_the_database() -> None:
    """storage/ is the only code with SQL: no other module imports a database driver."""
    problems = {}
    for path, name in modules_under(ROOT / "homeserver"):
        rel = str(path.relative_to(ROOT))
        if rel.startswith("homeserver/storage/") or rel in DRIVER_USERS_FOR_ERRORS:
            continue
        drivers = imported_modules(ast.parse(path.read_text()), name) & {"psycopg2", "sqlite3"}
        if drivers:
            problems[rel] = sorted(drivers)
    assert problems == {}
