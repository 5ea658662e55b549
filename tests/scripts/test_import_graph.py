"""The package's layers point down: no import cycles between parts of src/kyb, nothing in it imports
the services or the training code (scripts/import_graph.py, which anyone can run)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "import_graph.py"


@pytest.fixture(scope="module")
def import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["import_graph"] = module
    spec.loader.exec_module(module)
    return module


def test_src_kyb_has_no_cycles_and_no_upward_imports(import_graph, capsys) -> None:
    graph, upward = import_graph.build_graph()
    assert upward == []
    assert import_graph.cycles(graph) == []
    assert {"kyb.engine", "kyb.search", "kyb.index", "kyb.rpc"} <= set(graph)  # it read the package
    assert "kyb.search" in graph["kyb.engine"] and "kyb.engine" not in graph["kyb.search"]
    assert import_graph.main(["--check"]) == 0
    assert "no cycles, no upward imports" in capsys.readouterr().out


def test_the_checks_find_a_cycle_and_an_upward_import(import_graph, tmp_path, monkeypatch) -> None:
    assert import_graph.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    package = tmp_path / "src" / "kyb"
    (package / "low").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "low" / "__init__.py").write_text("def f():\n    from kyb.high import g\n")
    (package / "high.py").write_text(
        "from typing import TYPE_CHECKING\nfrom kyb.low import f\nif TYPE_CHECKING:\n    import services.x\n"
        "def g():\n    import kyb_training.detector\n"
    )
    monkeypatch.setattr(import_graph, "ROOT", tmp_path)
    monkeypatch.setattr(import_graph, "PACKAGE", package)
    graph, upward = import_graph.build_graph()
    assert import_graph.cycles(graph) == [["kyb.high", "kyb.low"]]  # a lazy import is a dependency too
    assert upward == ["src/kyb/high.py:6 imports kyb_training.detector"]  # TYPE_CHECKING imports are not
    assert import_graph.main(["--check"]) == 1
