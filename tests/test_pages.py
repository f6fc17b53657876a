"""Conventions of the page files, checked on their source (AST), without running them.

Streamlit runs a page file on its own when a visitor opens its URL, so each must begin with
`frame.page(TITLE)` (page config, login gate, demo, sidebar) before any other call: a page
that forgot it would be open to strangers and lack its data. Also: the sidebar's links name
every page file once, and the layers stay apart (sae_backend and the pure UI modules never
import streamlit).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from dashboard.frame import PAGES

ROOT = Path(__file__).resolve().parents[1]
PAGE_FILES = ["app.py", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "pages").glob("*.py"))]


def _runs_a_call(stmt: ast.stmt) -> bool:
    """Whether executing this top-level statement calls anything: a def's body runs later,
    but its decorators (each one is called) and default values run now."""
    if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        if stmt.decorator_list:
            return True
        now = (
            [*stmt.bases, *stmt.keywords]
            if isinstance(stmt, ast.ClassDef)
            else [d for d in (*stmt.args.defaults, *stmt.args.kw_defaults) if d is not None]
        )
        return any(isinstance(n, ast.Call) for part in now for n in ast.walk(part))
    return any(isinstance(n, ast.Call) for n in ast.walk(stmt))


def page_setup_problem(source: str) -> str | None:
    """Why `source` does not start with `frame.page("...")` as its first call, or None."""
    tree = ast.parse(source)
    if not any(
        isinstance(s, ast.ImportFrom)
        and s.module == "dashboard"
        and "frame" in {a.name for a in s.names}
        for s in tree.body
    ):
        return "does not import frame from dashboard"
    first = next((s for s in tree.body if _runs_a_call(s)), None)
    if first is None:
        return "calls nothing"
    call = first.value if isinstance(first, ast.Expr) else None
    if not (
        isinstance(call, ast.Call)
        and ast.unparse(call.func) == "frame.page"
        and len(call.args) == 1
        and isinstance(call.args[0], ast.Constant)
        and isinstance(call.args[0].value, str)
    ):
        return f"line {first.lineno} runs before frame.page(...): {ast.unparse(first)[:80]}"
    calls = [
        n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "frame.page"
    ]
    return None if len(calls) == 1 else f"calls frame.page {len(calls)} times"


def page_title(path: str) -> str:
    tree = ast.parse((ROOT / path).read_text())
    call = next(
        n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "frame.page"
    )
    return call.args[0].value


@pytest.mark.parametrize("path", PAGE_FILES)
def test_every_page_calls_frame_page_before_anything_else(path):
    assert page_setup_problem((ROOT / path).read_text()) is None, path


@pytest.mark.parametrize(
    "source, problem",
    [
        ("import streamlit as st\nfrom dashboard import frame\nst.title('x')\nframe.page('x')\n", "line 3"),
        ("from dashboard import frame, store\nd = store.dictionaries()\nframe.page('x')\n", "line 2"),
        ("import streamlit as st\nfrom dashboard import frame\n@st.cache_data\ndef f(): pass\nframe.page('x')\n", "line 4"),
        ("from dashboard import frame\nframe.page('x')\nframe.page('y')\n", "2 times"),
        ("import streamlit as st\nst.title('x')\n", "does not import frame"),
    ],
)  # fmt: skip
def test_the_check_catches_a_page_that_starts_otherwise(source, problem):
    assert problem in (page_setup_problem(source) or "")


def test_the_page_check_allows_definitions_and_constants_first():
    source = (
        '"""doc"""\nimport streamlit as st\nfrom dashboard import frame\nSEP = " → "\n'
        "def f(x=1):\n    st.title(x)\nframe.page('x')\nst.title('y')\n"
    )
    assert page_setup_problem(source) is None


def test_the_sidebar_links_every_page_once_under_its_title():
    assert sorted(path for path, _ in PAGES) == sorted(PAGE_FILES)
    for path, label in PAGES:
        assert page_title(path) == label, path
    assert PAGES[0] == ("app.py", "Dictionaries")  # the home page, first, not called "app"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_the_backend_and_the_pure_ui_modules_never_import_streamlit():
    pure = [ROOT / "dashboard" / n for n in ("text.py", "charts.py", "ladder.py", "tables.py")]
    backend = sorted((ROOT / "sae_backend").rglob("*.py"))
    assert len(backend) > 20
    for path in [*backend, *pure]:
        assert "streamlit" not in _imports(path), path
    assert "dashboard" not in set().union(*(_imports(p) for p in backend))
