"""The house: data flows down the floors, and a stage never reaches into a sibling.

The floor order is written once, here. Every import in the package (module level and inside
functions alike: a lazy import is still a dependency) must go to a room on a lower floor,
or stay inside its own room. The ground floor's rooms are small utilities that may use each
other; on every other floor, rooms are siblings and may not.
"""

import ast
from pathlib import Path

import quantstudy

PACKAGE = Path(quantstudy.__file__).parent

FLOORS = (
    ("__init__", "errors", "packaged", "schemes", "numerics", "numerics_fp", "hardware", "bootstrap", "serial", "items", "store"),
    ("data", "models"),                                       # packaged data sets; model references
    ("inference", "kernels"),                                 # engines; GPU kernels (benchmark only)
    ("quantize", "evaluate", "compare", "bench"),             # the stages
    ("results",),                                             # typed study results
    ("recommend",),
    ("report",),
    ("study",),
    ("cli_common",),                                          # the command line: app, consoles, one-line errors
    ("cli_measure",),                                         # evaluate, compare, predict, bench
    ("cli",),                                                 # quantize, info, study, report; the entry point
)
FLOOR = {room: level for level, rooms in enumerate(FLOORS) for room in rooms}


def room_of(module: str) -> str:
    """'quantstudy.bench.roofline' -> 'bench'; 'quantstudy' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported_rooms(source: str) -> list[tuple[int, str]]:
    """(line, room) of every quantstudy import in a module's source."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "quantstudy":
            if node.module == "quantstudy":    # from quantstudy import bootstrap, __version__
                out += [(node.lineno, a.name if a.name in FLOOR else "__init__") for a in node.names]
            else:
                out.append((node.lineno, room_of(node.module)))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, room_of(a.name)) for a in node.names if a.name.split(".")[0] == "quantstudy"]
    return out


def violations(room: str, source: str, where: str) -> list[str]:
    bad = []
    for line, target in imported_rooms(source):
        if target not in FLOOR:
            bad.append(f"{where}:{line}: imports {target!r}, which no floor holds")
        elif target != room and FLOOR[target] >= FLOOR[room] and not (FLOOR[room] == FLOOR[target] == 0):
            kind = "a sibling" if FLOOR[target] == FLOOR[room] else "a higher floor"
            bad.append(f"{where}:{line}: {room} (floor {FLOOR[room]}) imports {target} ({kind}, floor {FLOOR[target]})")
    return bad


def test_every_module_sits_on_a_floor():
    rooms = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}
    assert rooms <= set(FLOOR), sorted(rooms - set(FLOOR))


def test_imports_only_go_down_the_floors():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        room = rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.stem != "__init__" else "__init__"
        bad += violations(room, path.read_text(), str(rel))
    assert not bad, "\n".join(bad)


def test_the_check_finds_a_stage_importing_a_sibling_or_a_higher_floor():
    assert violations("compare", "from quantstudy.evaluate.records import ItemResult\n", "x.py")
    assert violations("store", "def f():\n    from quantstudy.evaluate import records\n", "x.py")
    assert violations("bench", "import quantstudy.study.run\n", "x.py")
    assert not violations("study", "from quantstudy.bench.plan import plan_runs\nfrom quantstudy import bootstrap\n",
                          "x.py")
