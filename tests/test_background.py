"""Pages that never block: `dashboard.background` and the pages on top of it.

The unit tests drive `outcome`/`soon`/`now`/`start` with works whose computation waits on a
gate, so "does not wait" is shown by a call returning while the gate is shut (no timing). The
AppTest tests shut the top-k pass of `compare` (or the load of a dictionary) the same way: a
page run returns with its controls, the results already known and a progress bar per result
still computing; opening the page again (another session) finds the same jobs, and every
result is computed once (the activity register's run counts); once the gate opens, the pages
show the float64 reference numbers.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import sae_backend.geometry.topk as topk_module
from dashboard import background, session, store
from dashboard.session import Entry
from sae_backend.activity import ACTIVITY
from sae_backend.demo import demo_sources
from sae_backend.errors import InputError
from sae_backend.jobs import Job
from sae_backend.memory import MemoryLRU
from tests.background_support import bars, settle
from tests.compare_topk import compare_only
from tests.factories import unit_rows, write_saelens
from tests.test_app import ROOT, TIMEOUT, max_cos, ok, toy_reference

GATE_S = 60  # a shut gate opens by itself after this long, so a failing test cannot hang


@pytest.fixture(autouse=True)
def toy_demo(monkeypatch):
    monkeypatch.setenv("SAE_DEMO", "toy")


class Gate:
    """A computation that waits until `open()`: calls counts how often it ran."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.calls: list[object] = []

    def open(self) -> None:
        self.event.set()

    def wait(self, what: object) -> None:
        self.calls.append(what)
        self.event.wait(GATE_S)


@pytest.fixture
def gate():
    g = Gate()
    yield g
    g.open()  # never leave a worker waiting


@pytest.fixture(scope="module")
def ref():
    return toy_reference()


@pytest.fixture
def demo_loaded():
    """The toy demo's dictionaries in the shared store, as on a server that has shown them."""
    for uri in demo_sources().values():
        background.now(store.dictionary_work(Entry(uri)))


@pytest.fixture
def toy(demo_loaded):
    """The toy demo's dictionaries by name, as the pages hold them."""
    return {n: background.now(store.dictionary_work(Entry(u))) for n, u in demo_sources().items()}


@pytest.fixture
def slow_compare(monkeypatch, gate, demo_loaded):
    """compare()'s top-k pass waits for the gate (after reporting that it started)."""
    real = topk_module.topk_cosine

    def gated(a, b, k, **kwargs):
        if kwargs.get("progress"):
            kwargs["progress"](0, len(a))
        gate.wait(("compare", len(a), None if b is None else len(b)))
        return real(a, b, k, **kwargs)

    monkeypatch.setattr(topk_module, "topk_cosine", compare_only(real, gated))
    return gate


def work(key: str, gate: Gate, memory: MemoryLRU | None, value: object = 42):
    def compute(progress):
        progress(1, 4)
        gate.wait(key)
        progress(4, 4)
        return value

    return background.Work(key, compute, f"label of {key}", memory)


# --- The module's API ----------------------------------------------------------------------


def test_a_held_result_comes_at_once_without_a_job(gate):
    memory = MemoryLRU(1 << 20)
    memory.get_or_compute("k", lambda: np.arange(3))
    background.start_run(0.0)
    got = background.outcome(work("k", gate, memory))
    np.testing.assert_array_equal(got, [0, 1, 2])
    assert gate.calls == [] and background.jobs().get("k") is None


def test_outcome_returns_the_unfinished_job_and_every_caller_shares_it(gate):
    memory = MemoryLRU(1 << 20)
    background.start_run(0.05)  # the run's whole budget for waiting
    first = background.outcome(work("slow", gate, memory))
    assert isinstance(first, Job) and first.state in ("queued", "running")
    # another session asks for the same key: the same job, no second computation
    background.start_run(0.05)
    again = background.outcome(work("slow", gate, memory, value="another value"))
    assert again is first
    assert background.describe(first).startswith("label of slow: ")
    gate.open()
    assert background.now(work("slow", gate, memory)) == 42
    assert gate.calls == ["slow"]
    # done: the shared store has it, so the next look needs no job at all
    assert memory.peek("slow") == 42 and background.outcome(work("slow", gate, memory)) == 42


def test_a_quick_new_job_is_waited_for_within_the_run_budget(gate):
    gate.open()
    background.start_run(10.0)
    assert background.outcome(work("quick", gate, None, value="v")) == "v"
    background.start_run(0.0)  # budget spent: no waiting, the job itself comes back
    gate.event.clear()
    got = background.outcome(work("quick-2", gate, None))
    assert isinstance(got, Job)
    gate.open()
    assert got.wait(10) and got.value() == 42


def test_a_failure_is_raised_to_every_caller_once_computed_and_start_retries():
    attempts = []

    def compute(progress):
        attempts.append(1)
        if len(attempts) == 1:
            raise InputError("cannot compare: d_model 64 and 32")
        return "second time"

    failing = background.Work("fails", compute, "fails")
    background.start_run(5.0)
    for _ in range(3):  # every page run shows the error; the job is not run again
        with pytest.raises(InputError, match="d_model 64 and 32"):
            background.outcome(failing)
    assert len(attempts) == 1
    job = background.start(failing)  # an explicit action tries again
    assert job.wait(5) and background.outcome(failing) == "second time"
    assert len(attempts) == 2


# --- Pages ---------------------------------------------------------------------------------


def page(path: str, **query: str) -> AppTest:
    """One run of `path` as a new session opens it (no settling: what the first paint shows)."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    if path != "app.py":
        at.switch_page(path)
    for key, value in query.items():
        at.query_params[key] = value
    return at.run()


def test_home_shows_its_table_and_controls_while_the_within_passes_compute(slow_compare, ref):
    at = page("app.py")  # returns although every top-k pass waits at the gate
    ok(at)
    table = at.dataframe[0].value.set_index("name")
    assert list(table.index) == ["toy-a", "toy-b", "toy-a-seed2"]
    assert table["within MMCS"].isna().all()
    assert table.loc["toy-a", "features"] == 1024  # what is known is shown
    assert sorted(b.split(":")[0] for b in bars(at)) == sorted(
        ["within toy-a", "within toy-b", "within toy-a-seed2"]
    )
    assert [b.label for b in at.button if b.label == "Load"] == ["Load"]
    slow_compare.open()
    settle(at)
    ok(at)
    table = at.dataframe[0].value.set_index("name")
    for name in ("toy-a", "toy-b", "toy-a-seed2"):
        assert table.loc[name, "within MMCS"] == pytest.approx(max_cos(ref, name).mean(), abs=1e-5)
    assert bars(at) == []


def test_adding_a_dictionary_returns_at_once_and_it_loads_in_the_background(
    monkeypatch, gate, tmp_path
):
    real = session.load

    def gated_load(uri, **kwargs):
        if "mine" in uri:
            gate.wait(uri)
        return real(uri, **kwargs)

    monkeypatch.setattr(session, "load", gated_load)
    dec = np.random.default_rng(4).standard_normal((30, 64))
    dec[:5] = dec[5:10] * 2.0  # planted scaled duplicates: within MMCS sees them
    folder = write_saelens(tmp_path / "mine", dec, None)
    at = settle(page("app.py"))
    at.text_input[0].input(str(folder))
    at.text_input[1].input("mine")
    at.button[0].click().run()  # returns while the load waits at the gate
    ok(at)
    assert list(at.dataframe[0].value["name"]) == ["toy-a", "toy-b", "toy-a-seed2"]
    assert [b.split(":")[0] for b in bars(at)] == [f"Loading mine ({folder})"]
    assert "mine" in at.session_state["sae_dicts"]
    assert gate.calls == [str(folder)]
    gate.open()
    settle(at)
    ok(at)
    table = at.dataframe[0].value.set_index("name")
    unit = unit_rows(dec)[0]
    s = unit @ unit.T
    np.fill_diagonal(s, -np.inf)
    assert table.loc["mine", ["features", "d_model"]].tolist() == [30, 64]
    assert table.loc["mine", "within MMCS"] == pytest.approx(s.max(1).mean(), abs=1e-5)


def test_a_failed_load_stays_shown_across_a_bars_reruns_until_the_next_action(slow_compare):
    at = page("app.py")  # within passes gated: bars, so the page will rerun by itself
    at.text_input[0].input("/no/such/file.pt")
    at.text_input[1].input("gone")
    at.button[0].click().run()
    if not at.error:  # the load had not failed within the run's short wait: a bar's rerun
        at.session_state[background.BY_A_BAR] = True
        at.run()
    assert len(at.error) == 1 and at.error[0].value.startswith("gone: ")
    assert "no such file" in at.error[0].value.lower()
    message = at.error[0].value
    assert "gone" not in at.session_state["sae_dicts"]  # nothing half-added
    at.session_state[background.BY_A_BAR] = True  # a bar's rerun: still shown
    at.run()
    assert [e.value for e in at.error] == [message]
    at.run()  # the visitor's next action: gone
    assert not at.error
    slow_compare.open()


def comparing(at: AppTest) -> set[str]:
    """What the bars of comparisons (the gated computations) name; nulls (random and rotation)
    and matchings of these small dictionaries finish at once."""
    ungated = ("matching", "random null", "rotation null")
    return {b.split(":")[0] for b in bars(at) if not b.startswith(ungated)}


def test_leaving_a_page_mid_computation_keeps_its_jobs_for_the_next_visit(slow_compare, ref):
    before = ACTIVITY.snapshot().runs
    first = page("pages/1_Similarity.py")  # three comparisons chosen, nine heatmap cells
    ok(first)
    assert first.get("plotly_chart") == []  # no histogram and no heatmap cell yet
    shown = comparing(first)
    assert {"toy-a → toy-b", "toy-a → toy-a-seed2", "within toy-a"} <= shown
    assert [m.label for m in first.multiselect][0].startswith("Comparisons")  # the controls
    # The visitor leaves: that session's script run has ended (AppTest.run returned), its
    # jobs have not. The next visit, from another session:
    second = page("pages/1_Similarity.py")
    ok(second)
    assert comparing(second) == shown  # the same jobs, still waiting at the gate
    status = page("pages/4_Status.py")
    ok(status)
    in_progress = status.dataframe[0].value
    assert {"within toy-a", "toy-a → toy-b"} <= set(in_progress["what"])
    slow_compare.open()
    settle(second)
    ok(second)
    table = second.dataframe[0].value.set_index("comparison")
    for label, (a, b) in {
        "toy-a → toy-b": ("toy-a", "toy-b"),
        "toy-a → toy-a-seed2": ("toy-a", "toy-a-seed2"),
        "within toy-a": ("toy-a", None),
    }.items():
        assert table.loc[label, "MMCS"] == pytest.approx(max_cos(ref, a, b).mean(), abs=1e-5)
    # every comparison ran once: 3 within + 6 between the three dictionaries
    after = ACTIVITY.snapshot().runs
    new = {k: n - before.get(k, 0) for k, n in after.items() if k[0] == "compare"}
    new = {k: n for k, n in new.items() if n}
    assert len(new) == 9 and set(new.values()) == {1}, new
    assert len(slow_compare.calls) == 9


def test_jobs_run_at_a_lower_cpu_priority_than_the_pages():
    """On a busy machine the threads that draw pages get the cores first (Linux: per thread)."""
    if not hasattr(os, "getpriority"):
        pytest.skip("no per-thread priorities here")

    def compute(progress):
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    page_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    job_nice = background.now(background.Work("nice", compute, "nice"))
    assert job_nice == min(19, page_nice + background.JOB_NICE) > page_nice


def test_families_and_geometry_show_their_controls_and_bars_while_computing(slow_compare, toy):
    """Issue 11's pages never block either: with compare's top-k shut, Families shows its
    controls and a bar for the families (their tree-mode edges are compare passes); Geometry
    a bar for the frame (its coherence is a compare pass) and, once they are done, the
    absorption signatures (their own pass) beside it. Once the gate opens they show the
    backend's numbers."""
    from dashboard.tables import absorption_table
    from sae_backend.geometry.absorption import absorption
    from sae_backend.geometry.families import families
    from sae_backend.geometry.frame import frame

    fam_page = page("pages/5_Families.py", ladder="toy-a,toy-b")
    ok(fam_page)
    assert fam_page.multiselect(key="fam_ladder").value == ["toy-a", "toy-b"]
    assert fam_page.slider(key="fam_tau").value == 0.5
    assert [b.split(":")[0] for b in bars(fam_page)] == ["families across toy-a → toy-b (τ = 0.5)"]
    assert not fam_page.dataframe  # no counts yet
    geo_page = page("pages/6_Geometry.py", dict="toy-b")
    ok(geo_page)
    assert "frame geometry of toy-b" in [b.split(":")[0] for b in bars(geo_page)]
    assert not geo_page.metric  # the frame's numbers: not yet
    # the absorption signatures are a pass of their own: once they are done, a bar's rerun
    # shows them while the frame still waits at the gate
    background.now(store.absorption_work(toy["toy-b"], 1))
    geo_page.session_state[background.BY_A_BAR] = True
    geo_page.run()
    ok(geo_page)
    assert "frame geometry of toy-b" in [b.split(":")[0] for b in bars(geo_page)]
    assert not geo_page.metric
    want = absorption_table(absorption(toy["toy-b"], k=1), "toy-b")
    assert list(geo_page.dataframe[0].value["feature"]) == list(want["feature"])
    slow_compare.open()
    settle(fam_page)
    ok(fam_page)
    c = families([toy["toy-a"], toy["toy-b"]], tau=0.5).counts()[0]
    row = fam_page.dataframe[0].value.set_index("level").loc["toy-a → toy-b"]
    assert [row["stable"], row["split"], row["novel"]] == [c.stable, c.split, c.novel]
    settle(geo_page)
    ok(geo_page)
    metrics = {m.label: m.value for m in geo_page.metric}
    assert metrics["mutual coherence"] == f"{frame(toy['toy-b']).coherence:.3f}"
