"""Which packages of vac may import which: the tree and its workers meet only in vac.vocabulary."""

import ast
import pathlib

import pytest

VAC = pathlib.Path(__file__).resolve().parents[2] / "vac"

# (importing package, imported package, the one module allowed to cross, why)
FORBIDDEN = [
    ("vac.workers", "vac.supervisor", None, "workers speak to the root only through messages"),
    ("vac.supervisor", "vac.workers", "vac.supervisor.build", "only the tree starts its workers' run"),
    ("vac.config", "vac.workers", None, "settings check limits from vac.vocabulary"),
    ("vac.config", "vac.supervisor", None, "settings are plain data the tree reads"),
    ("vac.machine", "vac.runtimes.docker", None, "a machine is prepared for any runtime"),
    ("vac.machine", "vac.runtimes.docker_api", None, "a machine is prepared for any runtime"),
]


def module_name(path):
    parts = path.relative_to(VAC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source, package):
    """Every module `source` (of a module in `package`) imports, `from a import b` counted as a and a.b."""
    tree = ast.parse(source)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def within(name, package):
    return name == package or name.startswith(package + ".")


def all_imports():
    imports = {}
    for path in sorted(VAC.rglob("*.py")):
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imports[name] = imported_names(path.read_text(), package)
    return imports


IMPORTS = all_imports()


@pytest.mark.parametrize("importer,imported,allowed,why", FORBIDDEN)
def test_no_module_imports_across_a_boundary(importer, imported, allowed, why):
    crossings = sorted(f"{module} imports {name}" for module, names in IMPORTS.items()
                       if within(module, importer) and module != allowed
                       for name in names if within(name, imported))
    assert crossings == [], why


def test_the_vocabulary_imports_nothing_of_ours():
    crossings = sorted(f"{module} imports {name}" for module, names in IMPORTS.items()
                       if within(module, "vac.vocabulary")
                       for name in names if within(name, "vac") and not within(name, "vac.vocabulary"))
    assert crossings == []


def test_the_check_sees_every_form_of_import():
    source = ("import vac.supervisor.root\nfrom vac.supervisor import factory\nfrom ..supervisor.tree import Tree\n"
              "def later():\n    from . import harness\n")
    assert imported_names(source, "vac.workers") >= {
        "vac.supervisor.root", "vac.supervisor.factory", "vac.supervisor.tree", "vac.workers.harness"}
    assert any(within(name, "vac.vocabulary") for name in IMPORTS["vac.workers.reaper"])
