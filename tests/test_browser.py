"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright.

The test starts `streamlit run app.py` itself on a free loopback port (with a private
SAE_CACHE_DIR), opens every page, checks that no exception element is shown, follows a
Neighbours deep link, clicks a neighbour, follows a Families deep link, clicks a family member,
goes to its Neighbours page and back, selects table rows (a family, an absorption pair), clicks
a UMAP point (placed through plotly's own axis transforms) and box / lasso selects a region,
and saves screenshots under artifacts/ (look at them). No browser is ever downloaded:
Playwright launches /usr/bin/chromium.
"""

from __future__ import annotations

import re
from itertools import pairwise

import pytest

from tests.browser_support import (
    CHROMIUM,
    assert_no_exception,
    chromium,
    shot,
    toy_app,
    wait_rendered,
)

pytestmark = pytest.mark.browser

PAGES = {"home": "/", "similarity": "/Similarity", "neighbours": "/Neighbours", "umap": "/UMAP",
         "families": "/Families", "geometry": "/Geometry", "status": "/Status"}  # fmt: skip

pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Base URL of a fresh `streamlit run app.py` on the toy demo; stopped afterwards."""
    with toy_app(tmp_path_factory.mktemp("browser_cache")) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 2400})
    p = context.new_page()
    yield p
    context.close()


@pytest.mark.parametrize("name", list(PAGES))
def test_page_opens_without_exception(server, page, name):
    page.goto(server + PAGES[name])
    wait_rendered(page)
    if name in ("similarity", "umap", "families", "geometry"):
        page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg', timeout=90_000)
        wait_rendered(page)
    assert_no_exception(page)
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0
    shot(page, f"page_{name}")
    titles = {
        "home": "SAE dictionary geometry",
        "similarity": "Similarity",
        "neighbours": "Neighbours",
        "umap": "UMAP",
        "families": "Families across widths",
        "geometry": "Geometry of a dictionary",
        "status": "Server status",
    }
    assert page.locator('[data-testid="stMain"] h1').first.inner_text().strip() == titles[name]


def test_sidebar_links_name_the_home_page_and_open_the_pages(server, page):
    page.goto(f"{server}/Neighbours?dict=toy-b&feature=17")
    wait_rendered(page)
    links = page.locator('[data-testid="stSidebar"] [data-testid="stPageLink-NavLink"]')
    assert [t.strip() for t in links.all_inner_texts()] == [
        "Dictionaries", "Similarity", "Neighbours", "UMAP", "Families", "Geometry", "Status"
    ]  # fmt: skip
    assert page.locator('[data-testid="stSidebarNav"]').count() == 0  # Streamlit's own list
    links.nth(1).click()
    page.wait_for_url(re.compile(r"/Similarity$"), timeout=30_000)
    wait_rendered(page)
    links.nth(0).click()
    page.wait_for_url(re.compile(r":\d+/$"), timeout=30_000)
    wait_rendered(page)
    assert page.locator('[data-testid="stMain"] h1').first.inner_text().strip() == (
        "SAE dictionary geometry"
    )
    assert_no_exception(page)


def test_deep_link_then_click_a_neighbour(server, page):
    page.goto(f"{server}/Neighbours?dict=toy-b&feature=17")
    wait_rendered(page)
    assert_no_exception(page)
    heading = page.get_by_role("heading", name=re.compile(r"toy-b · feature 17"))
    assert heading.count() == 1
    shot(page, "neighbours_deep_link")
    # The pills under "in toy-a": the first one is toy-b 17's nearest toy-a feature.
    group = page.locator('[data-testid="stButtonGroup"]').nth(1)
    first = group.locator("button").first
    target = first.inner_text().strip()
    assert target.isdigit()
    first.click()
    page.wait_for_url(re.compile(rf"dict=toy-a&feature={target}$"), timeout=30_000)
    wait_rendered(page)
    assert_no_exception(page)
    assert page.get_by_role("heading", name=f"toy-a · feature {target}").count() == 1
    shot(page, "neighbours_after_click")


def test_bad_feature_link_shows_an_error_not_a_traceback(server, page):
    page.goto(f"{server}/Neighbours?dict=toy-a&feature=99999")
    wait_rendered(page)
    assert_no_exception(page)
    assert "out of range" in page.locator('[data-testid="stAlertContentError"]').inner_text()
    shot(page, "neighbours_bad_feature")


# The UMAP scatter's points in page coordinates, through plotly's own axis transforms (d2p), so
# a click lands exactly on a chosen point. Returns [{trace, name, feature, x, y}] per point;
# the feature is customdata[0] when customdata holds [feature, hover text].
POINTS_JS = """() => {
  const gd = document.querySelector('[data-testid="stPlotlyChart"] .js-plotly-plot');
  const box = gd.getBoundingClientRect();
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  const out = [];
  gd._fullData.forEach((t, k) => {
    const xs = Array.from(t.x), ys = Array.from(t.y), cd = Array.from(t.customdata);
    xs.forEach((x, i) => out.push({
      trace: k, name: t.name, feature: Number(Array.isArray(cd[i]) ? cd[i][0] : cd[i]),
      x: box.left + xa._offset + xa.d2p(x), y: box.top + ya._offset + ya.d2p(ys[i]),
    }));
  });
  return out;
}"""


def open_umap(server, page):
    page.goto(server + "/UMAP")
    wait_rendered(page)
    page.wait_for_selector('[data-testid="stPlotlyChart"] .js-plotly-plot', timeout=90_000)
    wait_rendered(page)
    assert_no_exception(page)
    points = page.evaluate(POINTS_JS)
    assert {p["name"] for p in points} == {"toy-a", "toy-b"}  # the default: first two dicts
    return points


def test_umap_click_on_a_point_shows_that_feature(server, page):
    points = open_umap(server, page)
    # The most isolated point on screen, so the click cannot be taken by a neighbour.
    xy = [(p["x"], p["y"]) for p in points]
    gap = [min((x - u) ** 2 + (y - v) ** 2 for j, (u, v) in enumerate(xy) if j != i)
           for i, (x, y) in enumerate(xy)]  # fmt: skip
    target = points[max(range(len(points)), key=gap.__getitem__)]
    page.mouse.move(target["x"], target["y"])
    page.mouse.click(target["x"], target["y"])
    heading = f"{target['name']} · feature {target['feature']}"
    page.get_by_role("heading", name=heading).wait_for(timeout=30_000)
    wait_rendered(page)
    assert_no_exception(page)
    shot(page, "umap_after_click")
    # The link to that feature's Neighbours page opens it.
    link = page.get_by_role("link", name=re.compile(rf"feature {target['feature']} on the"))
    link.click()
    page.wait_for_url(
        re.compile(rf"Neighbours\?dict={target['name']}&feature={target['feature']}$"),
        timeout=30_000,
    )
    wait_rendered(page)
    assert page.get_by_role("heading", name=heading).count() == 1
    assert_no_exception(page)


@pytest.mark.parametrize("tool", ["Box Select", "Lasso Select"])
def test_umap_selection_gives_the_table_and_csv(server, page, tmp_path, tool):
    points = open_umap(server, page)
    xs, ys = sorted(p["x"] for p in points), sorted(p["y"] for p in points)
    n = len(points)
    # The tool from the chart's toolbar (shown on hover), then a rectangle over the middle of
    # the cloud: the box tool takes its corners, the lasso the path along its sides.
    page.mouse.move(xs[n // 2], ys[n // 2])
    page.locator(f'.modebar-btn[data-title="{tool}"]').click()
    x0, x1, y0, y1 = xs[n // 3], xs[2 * n // 3], ys[n // 3], ys[2 * n // 3]
    page.mouse.move(x0, y0)
    page.mouse.down()
    path = [(x1, y1)] if tool == "Box Select" else [(x1, y0), (x1, y1), (x0, y1), (x0, y0)]
    for x, y in path:
        page.mouse.move(x, y, steps=15)
    page.mouse.up()
    page.get_by_role("heading", name=re.compile(r"\d+ selected features")).wait_for(timeout=30_000)
    wait_rendered(page)
    assert_no_exception(page)
    shot(page, f"umap_after_{tool.split()[0].lower()}_select")
    with page.expect_download() as info:
        page.get_by_role("button", name="Selection (CSV)").click()
    path = tmp_path / "selection.csv"
    info.value.save_as(path)
    lines = path.read_text().splitlines()
    assert lines[0] == "RunType,EmbeddingIndex,X,Y"
    got = {(r.split(",")[0], int(r.split(",")[1])) for r in lines[1:]}

    def inside(p, margin):
        return x0 + margin < p["x"] < x1 - margin and y0 + margin < p["y"] < y1 - margin

    surely_in = {(p["name"], p["feature"]) for p in points if inside(p, 2)}
    maybe_in = {(p["name"], p["feature"]) for p in points if inside(p, -2)}
    assert len(surely_in) > 20
    assert surely_in <= got <= maybe_in
    heading = page.get_by_role("heading", name=re.compile(r"\d+ selected features"))
    assert heading.inner_text().strip() == f"{len(got)} selected features"


def test_similarity_heatmap_click_adds_its_comparison(server, page):
    page.goto(server + "/Similarity")
    wait_rendered(page)
    chosen = page.locator('[data-testid="stMultiSelect"]').first
    assert "toy-b → toy-a-seed2" not in chosen.inner_text()
    # Off the centre of the cell in row toy-b (index 1), column toy-a-seed2 (index 2).
    xy = page.evaluate(
        """() => {
        const gd = document.querySelectorAll('[data-testid="stPlotlyChart"] .js-plotly-plot')[1];
        const box = gd.getBoundingClientRect();
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
        return [box.left + xa._offset + xa.d2p(1.7), box.top + ya._offset + ya.d2p(1.3)];
      }"""
    )
    page.mouse.move(*xy)
    page.mouse.click(*xy)
    page.wait_for_function(
        """() => document.querySelector('[data-testid="stMultiSelect"]')
                 .innerText.includes('toy-b → toy-a-seed2')""",
        timeout=30_000,
    )
    wait_rendered(page)
    assert_no_exception(page)
    shot(page, "similarity_after_heatmap_click")


# The family tree's members on screen (traces drawn as squares with text), through plotly's own
# axis transforms: [{name, feature, x, y}] per member, customdata = [dictionary, feature, labels].
MEMBERS_JS = """() => {
  const gd = [...document.querySelectorAll('[data-testid="stPlotlyChart"] .js-plotly-plot')]
    .find(g => g._fullData.some(t => t.mode === 'markers+text'));
  const box = gd.getBoundingClientRect();
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  const out = [];
  gd._fullData.filter(t => t.mode === 'markers+text').forEach(t => {
    Array.from(t.x).forEach((x, i) => out.push({
      name: t.customdata[i][0], feature: Number(t.customdata[i][1]),
      x: box.left + xa._offset + xa.d2p(x), y: box.top + ya._offset + ya.d2p(t.y[i]),
    }));
  });
  return out;
}"""


def families_heading(page) -> str:
    return page.get_by_role("heading", name=re.compile(r"^Family of ")).inner_text().strip()


def test_families_deep_link_a_member_then_neighbours_and_back(server, page):
    """A deep link opens a family; a click on a member in the tree focuses it; its link opens it
    on Neighbours (same tab), whose 'Families of this feature' comes back to the same family."""
    page.goto(f"{server}/Families?ladder=toy-a,toy-b&dict=toy-a&feature=158&tau=0.5&mode=tree")
    wait_rendered(page)
    assert_no_exception(page)
    assert families_heading(page) == "Family of toy-a · feature 158"
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0
    members = page.evaluate(MEMBERS_JS)
    # planted: toy-a 158 splits into toy-b 984 (cos .967) and 32 (.501), as on the AppTest
    assert {(m["name"], m["feature"]) for m in members} == {
        ("toy-a", 158), ("toy-b", 984), ("toy-b", 32)
    }  # fmt: skip
    pills = page.locator('[data-testid="stButtonGroup"]').first.locator("button")
    assert pills.count() == len(members)
    shot(page, "families_deep_link")
    # a click on a member of the tree: the one of toy-b drawn lowest
    target = max((m for m in members if m["name"] == "toy-b"), key=lambda m: m["y"])
    name, feature = target["name"], target["feature"]
    page.mouse.move(target["x"], target["y"])
    page.mouse.click(target["x"], target["y"])
    page.wait_for_url(re.compile(rf"dict={name}&feature={feature}&tau=0.5&mode=tree$"),
                      timeout=30_000)  # fmt: skip
    wait_rendered(page)
    assert families_heading(page) == f"Family of {name} · feature {feature}"
    assert_no_exception(page)
    shot(page, "families_after_member_click")
    # to Neighbours, in the same tab
    page.get_by_role("link", name=f"Open {name} feature {feature} on Neighbours").click()
    page.wait_for_url(re.compile(rf"/Neighbours\?dict={name}&feature={feature}$"), timeout=30_000)
    wait_rendered(page)
    assert_no_exception(page)
    assert page.get_by_role("heading", name=f"{name} · feature {feature}").count() == 1
    shot(page, "neighbours_from_families")
    # ... and back: the same ladder, tau and mode
    page.get_by_role("link", name="Families of this feature (toy-a → toy-b)").click()
    page.wait_for_url(
        re.compile(rf"/Families\?ladder=toy-a(,|%2C)toy-b&dict={name}&feature={feature}"
                   r"&tau=0.5&mode=tree$"),
        timeout=30_000,
    )  # fmt: skip
    wait_rendered(page)
    assert_no_exception(page)
    assert families_heading(page) == f"Family of {name} · feature {feature}"
    shot(page, "families_back_from_neighbours")


def test_families_dag_link_and_geometry_link_open_without_errors(server, page):
    page.goto(f"{server}/Families?ladder=toy-b,toy-a,toy-a-seed2&dict=toy-a&feature=3&tau=0.3"
              "&mode=dag")  # fmt: skip
    wait_rendered(page)
    assert_no_exception(page)
    assert families_heading(page) == "Family of toy-a · feature 3"
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0
    # the family as drawn: every member once, each column's members apart from one another
    members = page.evaluate(MEMBERS_JS)
    assert len(members) > 10
    assert len({(m["name"], m["feature"]) for m in members}) == len(members)
    columns: dict[int, list[float]] = {}
    for m in members:
        columns.setdefault(round(m["x"]), []).append(m["y"])
    assert len(columns) == 3
    for ys in columns.values():
        ys.sort()
        assert all(b - a >= 16 for a, b in pairwise(ys)), ys  # squares of 16 px never overlap
    shot(page, "families_dag")
    page.goto(f"{server}/Geometry?dict=toy-b&k=2")
    wait_rendered(page)
    page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg', timeout=60_000)
    wait_rendered(page)
    assert_no_exception(page)
    assert page.get_by_role("heading", name="Frame of toy-b").count() == 1
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0
    assert page.locator('[data-testid="stPlotlyChart"]').count() == 6  # 4 frame, 2 absorption
    shot(page, "geometry_deep_link")


def click_table_row(page, table: int, row: int) -> None:
    """Tick row `row` of the `table`-th dataframe (its selection column, at the left; rows and
    header are 35 px in Streamlit's grid)."""
    grid = page.locator('[data-testid="stDataFrame"]').nth(table)
    grid.scroll_into_view_if_needed()
    box = grid.bounding_box()
    page.mouse.click(box["x"] + 18, box["y"] + 35 * (row + 1) + 17)


def test_a_row_of_features_by_label_opens_its_family(server, page):
    page.goto(f"{server}/Families?ladder=toy-a,toy-b&dict=toy-a&feature=158&tau=0.5&mode=tree")
    wait_rendered(page)
    # the splits of toy-a -> toy-b, most children first, then by feature: 158, 205, ...
    click_table_row(page, 2, 1)
    page.wait_for_url(re.compile(r"dict=toy-a&feature=205&tau=0.5&mode=tree$"), timeout=30_000)
    wait_rendered(page)
    assert_no_exception(page)
    assert families_heading(page) == "Family of toy-a · feature 205"
    shot(page, "families_after_row_select")


def test_an_absorption_row_links_to_both_features(server, page):
    page.goto(f"{server}/Geometry?dict=toy-b&k=1")
    wait_rendered(page)
    page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg', timeout=60_000)
    wait_rendered(page)
    click_table_row(page, 0, 0)
    partner = page.get_by_role("link", name=re.compile(r"its partner \d+ on Neighbours"))
    partner.wait_for(timeout=30_000)
    wait_rendered(page)
    shot(page, "geometry_absorption_row_selected")
    feature = re.search(r"(\d+)", partner.inner_text()).group(1)
    partner.click()
    page.wait_for_url(re.compile(rf"/Neighbours\?dict=toy-b&feature={feature}$"), timeout=30_000)
    wait_rendered(page)
    assert_no_exception(page)
    assert page.get_by_role("heading", name=f"toy-b · feature {feature}").count() == 1
