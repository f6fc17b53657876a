"""wandb: source against the real wandb client talking to a loopback fake W&B backend.

The fake (../shared/testing/fake_wandb.py, a team test double) serves run folders from disk:
`ROOT/ENTITY/PROJECT/RUN_ID/` with the run's files and `_run.json` (name, config, summary,
state). Tests check the file choice, alive indices, metadata, the cache (no second download),
atomic downloads and one clear message for each failure. `fetch_atomic`, the helper that makes
downloads atomic, is also tested directly with failures injected mid-write.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
from pathlib import Path

import pytest

from sae_backend.errors import SourceError
from sae_backend.sources import resolve
from sae_backend.sources._download import PARTIAL_PREFIX, fetch_atomic
from sae_backend.sources.wandb import run_metadata
from sae_backend.uri import parse_uri

_TESTING = Path(__file__).resolve().parents[2] / "shared" / "testing"
if not (_TESTING / "fake_wandb.py").is_file():
    pytest.skip(
        f"fake W&B backend not found at {_TESTING}/fake_wandb.py (team test double)",
        allow_module_level=True,
    )
sys.path.insert(0, str(_TESTING))
from fake_wandb import FakeWandbServer  # noqa: E402

from tests.support import expect_source_error  # noqa: E402
from tests.support import wandb_client_env as client_env  # noqa: E402

KEY = "k" * 40  # the client wants 40+ [A-Za-z0-9_] characters
POS = "blocks.6.hook_resid_pre"
ENTITY, PROJECT = "sparsify", "gpt2"


@pytest.fixture(scope="module", autouse=True)
def wandb_client_env(tmp_path_factory):
    """Client settings the fake needs, set before the first `import wandb` / `wandb.Api()`."""
    home = tmp_path_factory.mktemp("wandb-home")
    env = {"WANDB_HTTP_TIMEOUT": "5", **client_env(home)}
    saved = {k: os.environ.get(k) for k in [*env, "WANDB_API_KEY", "WANDB_BASE_URL"]}
    os.environ.update(env)
    pytest.importorskip("wandb")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """The fake's data folder; the SAE cache in tmp_path; the right API key."""
    monkeypatch.setenv("SAE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    root = tmp_path / "runs"
    root.mkdir()
    return root


@pytest.fixture
def server(runs, monkeypatch):
    with FakeWandbServer(str(runs), api_key=KEY, ttl=300) as srv:
        monkeypatch.setenv("WANDB_BASE_URL", srv.base_url)
        yield srv


def make_run(root: Path, run_id: str, files: dict[str, bytes], **meta) -> Path:
    folder = root / ENTITY / PROJECT / run_id
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "_run.json").write_text(json.dumps(meta))
    return folder


def e2e_config(*positions: str, kl: float | None = None, downstream: float | None = None) -> dict:
    loss = {"sparsity": {"p_norm": 1.0, "coeff": 1.5}}
    loss["logits_kl"] = {"coeff": kl} if kl is not None else None
    loss["in_to_orig"] = {"total_coeff": downstream} if downstream is not None else None
    sae_positions = positions[0] if len(positions) == 1 else list(positions)
    return {
        "tlens_model_name": "gpt2",
        "seed": 0,
        "n_samples": 400000,
        "saes": {"sae_positions": sae_positions, "dict_size_to_input_ratio": 60.0},
        "loss": loss,
    }


def summary(pos: str = POS, alive: list[int] | None = None) -> dict:
    out = {
        f"sparsity/eval/L_0/{pos}": 32.5,
        "performance/eval/difference_ce_loss": -0.125,
        f"sparsity/alive_dict_elements/{pos}": 999,  # during training; the final one wins
        "sparsity/dict_el_frequency_hist/x": {"_type": "histogram"},  # not kept
    }
    if alive is not None:
        out[f"sparsity/alive_dict_elements_indices_final/{pos}"] = alive
        out[f"sparsity/alive_dict_elements_final/{pos}"] = len(set(alive))
    return out


def standard_run(root: Path, run_id: str = "run6", state: str = "finished") -> Path:
    files = {
        "final_config.yaml": b"saes:\n  sae_positions: blocks.6.hook_resid_pre\n",
        "samples_100.pt": b"A" * 100,
        "samples_90000.pt": b"B" * 900,  # after 400000 in string order: must not win
        "samples_400000.pt": bytes(range(256)) * 8,
        "output.log": b"log",
        "wandb-metadata.json": b"{}",
    }
    return make_run(
        root,
        run_id,
        files,
        name="e2e_L6_seed0",
        state=state,
        config=e2e_config(POS, kl=1.0),
        summary=summary(alive=[7, 3, 5, 3]),
    )


def file_gets(srv) -> list[str]:
    return [r["file"] for r in srv.requests if r.get("file") and r.get("method") == "GET"]


# ----------------------------------------------------------------------------- happy path


def test_fetches_config_and_latest_checkpoint(runs, server, tmp_path):
    src = standard_run(runs)
    r = resolve(parse_uri(f"wandb:{ENTITY}/{PROJECT}/run6"))
    assert r.path == tmp_path / "cache" / "sae_downloads" / "wandb" / ENTITY / PROJECT / "run6"
    assert sorted(p.name for p in r.path.iterdir()) == [
        "final_config.yaml",
        "samples_400000.pt",
        "wandb_run.json",
    ]
    for name in ("final_config.yaml", "samples_400000.pt"):
        assert (r.path / name).read_bytes() == (src / name).read_bytes()
    assert sorted(file_gets(server)) == ["final_config.yaml", "samples_400000.pt"]
    assert r.position == POS
    assert r.alive_indices == [3, 5, 7]  # sorted, duplicates dropped
    assert r.meta == {
        "hook": POS,
        "layer": 6,
        "model_name": "gpt2",
        "sae_type": "e2e",
        "sparsity_coeff": 1.5,
        "seed": 0,
        "n_samples": 400000,
        "dict_size_to_input_ratio": 60.0,
        "l0": 32.5,
        "alive_count": 3,
        "ce_loss_increase": 0.125,
        "run_name": "e2e_L6_seed0",
        "run_path": f"{ENTITY}/{PROJECT}/run6",
        "run_url": f"{server.base_url}/{ENTITY}/{PROJECT}/runs/run6",
        "checkpoint": "samples_400000.pt",
        "alive_from": "W&B run summary",
    }


def test_second_resolve_makes_no_network_call(runs, server):
    standard_run(runs)
    uri = f"wandb:{ENTITY}/{PROJECT}/run6"
    first = resolve(parse_uri(uri))
    seen = len(server.requests)
    again = resolve(parse_uri(uri))
    assert len(server.requests) == seen  # not even a GraphQL query
    server.stop()
    offline = resolve(parse_uri(uri))  # and it still works with the server gone
    assert first == again == offline


def test_incomplete_cache_is_fetched_again(runs, server):
    src = standard_run(runs)
    uri = f"wandb:{ENTITY}/{PROJECT}/run6"
    first = resolve(parse_uri(uri))
    ckpt = first.path / "samples_400000.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # e.g. damaged by hand: size no longer matches
    resolve(parse_uri(uri))
    assert ckpt.read_bytes() == (src / "samples_400000.pt").read_bytes()
    assert file_gets(server).count("samples_400000.pt") == 2
    assert file_gets(server).count("final_config.yaml") == 1  # the intact file is kept


def test_running_run_is_asked_again_but_weights_not_downloaded_again(runs, server):
    standard_run(runs, state="running")
    uri = f"wandb:{ENTITY}/{PROJECT}/run6"
    resolve(parse_uri(uri))
    assert file_gets(server).count("samples_400000.pt") == 1
    seen = len(server.requests)
    r = resolve(parse_uri(uri))
    assert len(server.requests) > seen  # the run may have moved on: asked again
    assert file_gets(server).count("samples_400000.pt") == 1  # same file: not fetched again
    assert r.alive_indices == [3, 5, 7]


def test_progress_on_callers_thread(runs, server):
    standard_run(runs)
    calls = []
    resolve(
        parse_uri(f"wandb:{ENTITY}/{PROJECT}/run6"),
        progress=lambda done, total, what: calls.append((done, total, what, threading.get_ident())),
    )
    assert (2048, 2048, "run6/samples_400000.pt") in [c[:3] for c in calls]
    assert {c[3] for c in calls} == {threading.get_ident()}


def test_position_from_uri_in_a_run_with_two_saes(runs, server):
    other = "blocks.10.hook_resid_pre"
    make_run(
        runs,
        "two",
        {"samples_5.pt": b"x" * 10},
        config=e2e_config(POS, other),
        summary={**summary(POS, alive=[1, 2]), **summary(other, alive=[4])},
    )
    expect_source_error(f"wandb:{ENTITY}/{PROJECT}/two", "2 positions", "add #POSITION")
    assert file_gets(server) == []  # said before downloading anything
    r = resolve(parse_uri(f"wandb:{ENTITY}/{PROJECT}/two#blocks-10-hook_resid_pre"))
    assert r.position == other and r.alive_indices == [4] and r.meta["layer"] == 10
    expect_source_error(
        f"wandb:{ENTITY}/{PROJECT}/two#blocks.3.hook_resid_pre", "no SAE at blocks.3"
    )


def test_without_config_or_alive_keys(runs, server):
    make_run(runs, "bare", {"samples_1.pt": b"z"}, config={}, summary={})
    r = resolve(parse_uri(f"wandb:{ENTITY}/{PROJECT}/bare"))
    assert r.position is None and r.alive_indices is None
    assert sorted(p.name for p in r.path.iterdir()) == ["samples_1.pt", "wandb_run.json"]
    assert "alive_from" not in r.meta


def test_position_from_summary_when_config_has_none(runs, server):
    make_run(runs, "s", {"samples_1.pt": b"z"}, config={}, summary=summary(alive=[0]))
    r = resolve(parse_uri(f"wandb:{ENTITY}/{PROJECT}/s"))
    assert r.position == POS and r.alive_indices == [0]


# ----------------------------------------------------------------------------- failures


def test_no_api_key(runs, server, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY")
    standard_run(runs)
    expect_source_error(
        f"wandb:{ENTITY}/{PROJECT}/run6", "no W&B API key", "WANDB_API_KEY", "wandb login"
    )


def test_wrong_api_key(runs, server, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "w" * 40)
    standard_run(runs)
    expect_source_error(f"wandb:{ENTITY}/{PROJECT}/run6", "W&B rejected the API key")


def test_missing_or_private_run(runs, server):
    expect_source_error(f"wandb:{ENTITY}/{PROJECT}/nosuch", "W&B has no run sparsify/gpt2/nosuch")


def test_run_without_checkpoint(runs, server):
    make_run(runs, "nockpt", {"final_config.yaml": b"a: 1\n", "model.pt": b"m"}, config={})
    expect_source_error(
        f"wandb:{ENTITY}/{PROJECT}/nockpt", "no samples_N.pt checkpoint", "model.pt"
    )
    make_run(runs, "nopt", {"output.log": b"l"}, config={})
    expect_source_error(
        f"wandb:{ENTITY}/{PROJECT}/nopt", "no samples_N.pt checkpoint", "output.log"
    )


def test_network_down(runs, monkeypatch):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    expect_source_error(
        f"wandb:{ENTITY}/{PROJECT}/run6",
        "cannot reach W&B",
        f"127.0.0.1:{port}",
        "connection refused",
    )


def test_malformed_alive_indices(runs, server):
    bad = summary()
    bad[f"sparsity/alive_dict_elements_indices_final/{POS}"] = [1, "two"]
    make_run(runs, "bad", {"samples_1.pt": b"z"}, config=e2e_config(POS), summary=bad)
    expect_source_error(
        f"wandb:{ENTITY}/{PROJECT}/bad", "not a list of non-negative feature indices"
    )


def test_failed_download_leaves_no_file_and_recovers(runs, server):
    src = standard_run(runs)
    server.httpd.fail["file:samples_400000.pt"] = 404
    expect_source_error(
        f"wandb:{ENTITY}/{PROJECT}/run6", "downloading samples_400000.pt failed", "404"
    )
    folder = (
        Path(os.environ["SAE_CACHE_DIR"]) / "sae_downloads" / "wandb" / ENTITY / PROJECT / "run6"
    )
    leftovers = sorted(p.name for p in folder.iterdir())
    assert leftovers == ["final_config.yaml"]  # complete small file only; no manifest, no partial
    server.httpd.fail.clear()
    r = resolve(parse_uri(f"wandb:{ENTITY}/{PROJECT}/run6"))
    assert (r.path / "samples_400000.pt").read_bytes() == (src / "samples_400000.pt").read_bytes()
    assert file_gets(server).count("final_config.yaml") == 1  # kept from the failed attempt


# ----------------------------------------------------------------------------- atomic helper


def test_fetch_atomic_short_transfer_is_not_kept(tmp_path):
    dest = tmp_path / "d" / "samples_1.pt"

    def short(tmp_dir: Path) -> Path:
        (tmp_dir / "f").write_bytes(b"x" * 10)
        return tmp_dir / "f"

    with pytest.raises(SourceError, match="downloaded 10 bytes but the server announced 20"):
        fetch_atomic(dest, short, expected_size=20, what="f")
    assert list(dest.parent.iterdir()) == []


def test_fetch_atomic_failure_mid_write_keeps_old_file(tmp_path):
    dest = tmp_path / "samples_1.pt"
    dest.write_bytes(b"old complete file")

    def broken(tmp_dir: Path) -> Path:
        (tmp_dir / "f").write_bytes(b"half")
        raise ConnectionResetError("peer went away")

    with pytest.raises(ConnectionResetError):
        fetch_atomic(dest, broken, expected_size=100, what="f")
    assert dest.read_bytes() == b"old complete file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples_1.pt"]


def test_fetch_atomic_caller_interrupted_while_worker_writes(tmp_path):
    dest = tmp_path / "samples_1.pt"
    release = threading.Event()
    finished = threading.Event()

    def slow(tmp_dir: Path) -> Path:
        (tmp_dir / "f").write_bytes(b"part")
        release.wait(10)
        (tmp_dir / "f").write_bytes(b"part and the rest")
        finished.set()
        return tmp_dir / "f"

    def stop(done, total, what):
        raise KeyboardInterrupt  # e.g. Ctrl-C, or the app stopping the script

    with pytest.raises(KeyboardInterrupt):
        fetch_atomic(dest, slow, expected_size=17, what="f", progress=stop)
    release.set()
    assert finished.wait(10)
    assert not dest.exists()  # the worker finished, but nobody moved its file into place
    assert [p.name.startswith(PARTIAL_PREFIX) for p in tmp_path.iterdir()] == [True]


# ----------------------------------------------------------------------------- metadata


@pytest.mark.parametrize(
    ("kl", "downstream", "expected"),
    [(None, None, "local"), (0.0, None, "local"), (1.0, None, "e2e"), (1.0, 0.5, "downstream")],
)
def test_sae_type_from_loss_coefficients(kl, downstream, expected):
    meta = run_metadata(e2e_config(POS, kl=kl, downstream=downstream), {}, POS)
    assert meta["sae_type"] == expected


def test_metadata_without_summary_values():
    meta = run_metadata({"loss": {"sparsity": {"coeff": 4}}}, {"sparsity/eval/L_0/x": "nan"}, "x")
    assert meta == {"hook": "x", "sae_type": "local", "sparsity_coeff": 4.0}


# ----------------------------------------------------------------------------- through load()


def test_load_end_to_end(runs, server):
    """wandb: URI -> Dictionary: latest checkpoint's decoder, alive mask from the summary."""
    loader = pytest.importorskip("sae_backend.loader")
    np = pytest.importorskip("numpy")
    from factories import e2e_config as factory_config
    from factories import planted, unit_rows, write_e2e_folder

    new, old = planted(d=6, seed=0), planted(d=6, seed=5)
    folder = runs / ENTITY / PROJECT / "e2e1"
    config = factory_config([POS])
    write_e2e_folder(
        folder,
        {100: {POS: (old.decoder, old.encoder)}, 400000: {POS: (new.decoder, new.encoder)}},
        config=config,
    )
    alive = [0, 1, 2, 5, 7, 9]  # row 7 is zero: dead whatever the summary says
    meta = {"name": "e2e_L6", "config": config, "summary": summary(alive=alive)}
    (folder / "_run.json").write_text(json.dumps(meta))

    d = loader.load(f"wandb:{ENTITY}/{PROJECT}/e2e1")
    unit, norms = unit_rows(new.decoder)
    np.testing.assert_allclose(d.decoder, unit, atol=1e-6)
    np.testing.assert_allclose(d.decoder_norms, norms, rtol=1e-5)
    np.testing.assert_allclose(d.encoder, unit_rows(new.encoder)[0], atol=1e-6)
    expected = np.zeros(10, dtype=bool)
    expected[alive] = True
    expected &= norms > 0
    np.testing.assert_array_equal(d.alive, expected)
    assert d.meta.alive_from == "W&B run summary"
    assert (d.meta.hook, d.meta.layer, d.meta.format) == (POS, 6, "e2e_sae")
    assert d.meta.extra["run_name"] == "e2e_L6"
    assert d.meta.extra["checkpoint"] == "samples_400000.pt"
    assert d.meta.extra["ce_loss_increase"] == 0.125


def test_load_rejects_alive_index_out_of_range(runs, server):
    loader = pytest.importorskip("sae_backend.loader")
    from factories import e2e_config as factory_config
    from factories import planted, write_e2e_folder

    from sae_backend.errors import FormatError

    p = planted(d=6)
    folder = runs / ENTITY / PROJECT / "oob"
    write_e2e_folder(folder, {5: {POS: (p.decoder, p.encoder)}}, config=factory_config([POS]))
    meta = {"config": factory_config([POS]), "summary": summary(alive=[1, 10])}  # n = 10
    (folder / "_run.json").write_text(json.dumps(meta))
    with pytest.raises(FormatError, match="alive feature index 10 is out of range for 10"):
        loader.load(f"wandb:{ENTITY}/{PROJECT}/oob")
