"""hf: and saelens: sources against the real huggingface_hub client, never the network.

Two stand-ins for the Hub, both exercising `hf_hub_download` / `list_repo_tree` themselves:
- `FakeHub`: a tiny HTTP endpoint on 127.0.0.1 (HF_ENDPOINT) serving the three routes the client
  uses here (HEAD/GET .../resolve/REV/PATH and GET /api/models/REPO/tree/REV/PATH), with the
  error headers the real Hub sends; its request log shows which files were downloaded.
- a hub cache built by hand in the documented layout (`models--owner--name/refs/main`,
  `blobs/`, `snapshots/COMMIT/...`), read with HF_HUB_OFFLINE=1.

huggingface_hub reads HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE once, when `huggingface_hub.constants`
is imported; in-process tests set the variables and re-evaluate that module (fixture `hf_env`),
and one test runs a fresh interpreter with the environment variables alone, as a user would.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import types
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sae_backend.sources import resolve
from sae_backend.uri import parse_uri
from tests.support import expect_source_error

REPO_ROOT = Path(__file__).resolve().parents[1]
APOLLO = "apollo-research/e2e-saes-gpt2"
NP_SCE = "neuronpedia/gpt2-small__res_sce-ajt"
POS_HF = "blocks.6.hook_resid_pre"


def _commit(tag: str) -> str:
    return hashlib.sha1(tag.encode()).hexdigest()


# ----------------------------------------------------------------------------- fake Hub


class FakeHub:
    """Repos in memory: {repo_id: {revision: (commit, {path: bytes})}}, served on loopback."""

    def __init__(self, repos: dict[str, dict[str, tuple[str, dict[str, bytes]]]]):
        self.repos = repos
        self.log: list[tuple[str, str]] = []  # (method, path) of every request
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub._serve(self, body=False)

            def do_GET(self):
                hub._serve(self, body=True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()

    def downloads(self) -> list[str]:
        """Repo paths whose bytes were sent (GET on a resolve URL)."""
        out = []
        for method, path in self.log:
            if method == "GET" and "/resolve/" in path:
                out.append(urllib.parse.unquote(path.split("/resolve/", 1)[1].split("/", 1)[1]))
        return out

    # -- routes -----------------------------------------------------------------------------
    def _serve(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        url = urllib.parse.urlsplit(h.path)
        self.log.append((h.command, url.path))
        parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
        if len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] == "tree":
            return self._tree(h, "/".join(parts[2:4]), parts[5], "/".join(parts[6:]))
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._file(h, "/".join(parts[:2]), parts[3], "/".join(parts[4:]), body)
        self._error(h, 404, None)

    def _lookup(self, h, repo: str, revision: str):
        if repo not in self.repos:
            self._error(h, 401, "RepoNotFound")  # the Hub answers 401 for unknown repos
            return None
        for name, (commit, files) in self.repos[repo].items():
            if revision in (name, commit):
                return commit, files
        self._error(h, 404, "RevisionNotFound")
        return None

    def _file(self, h, repo: str, revision: str, path: str, body: bool) -> None:
        found = self._lookup(h, repo, revision)
        if found is None:
            return
        commit, files = found
        if path not in files:
            return self._error(h, 404, "EntryNotFound", commit)
        data = files[path]
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(data)))
        h.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        h.send_header("X-Repo-Commit", commit)
        h.end_headers()
        if body:
            h.wfile.write(data)

    def _tree(self, h, repo: str, revision: str, folder: str) -> None:
        found = self._lookup(h, repo, revision)
        if found is None:
            return
        commit, files = found
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        entries, seen = [], set()
        for path, data in sorted(files.items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :]
            head = rest.split("/", 1)[0]
            if "/" in rest:
                if head not in seen:
                    seen.add(head)
                    entries.append({"type": "directory", "oid": "0" * 40, "path": prefix + head})
            else:
                oid = hashlib.sha1(data).hexdigest()
                entries.append({"type": "file", "oid": oid, "size": len(data), "path": path})
        if prefix and not entries:
            return self._error(h, 404, "EntryNotFound", commit)
        payload = json.dumps(entries).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)

    def _error(self, h, status: int, code: str | None, commit: str | None = None) -> None:
        payload = json.dumps({"error": f"fake hub: {code or 'no route'}"}).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(payload)))
        if code:
            h.send_header("X-Error-Code", code)
        if commit:
            h.send_header("X-Repo-Commit", commit)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(payload)


def _bytes(tag: str, n: int = 64) -> bytes:
    return hashlib.sha256(tag.encode()).digest() * (n // 32)


def _repos() -> dict[str, dict[str, tuple[str, dict[str, bytes]]]]:
    apollo_main = {
        "e2e_similar_ce_layer_6.pt": _bytes("e2e ce 6"),
        "e2e_similar_ce_layer_6.yaml": b"saes: {sae_positions: blocks.6.hook_resid_pre}\n",
        "local_similar_ce_layer_6.pt": _bytes("local ce 6", 4096),  # must not be fetched
        "no_config_layer_2.pt": _bytes("no config"),
        "README.md": b"# e2e SAEs\n",
    }
    np_main = {
        "6-res_sce-ajt/cfg.json": b'{"d_in": 768}',
        "6-res_sce-ajt/sae_weights.safetensors": _bytes("sce 6 weights"),
        "6-res_sce-ajt/sparsity.safetensors": _bytes("sce 6 sparsity"),
        "6-res_sce-ajt/notes.txt": b"not needed",
        "2-res_sce-ajt/cfg.json": b'{"d_in": 768}',
        "2-res_sce-ajt/sae_weights.safetensors": _bytes("sce 2 weights"),
        "docs/README.md": b"nothing here",
    }
    return {
        APOLLO: {
            "main": (_commit("apollo main"), apollo_main),
            "v1": (
                _commit("apollo v1"),
                {**apollo_main, "e2e_similar_ce_layer_6.pt": _bytes("old")},
            ),
        },
        NP_SCE: {"main": (_commit("np main"), np_main)},
    }


_HF_VARS = (
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_ENDPOINT",
    "HF_HUB_OFFLINE",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_HUB_DISABLE_TELEMETRY",
    "HF_HUB_ETAG_TIMEOUT",
)


@pytest.fixture
def hf_env(tmp_path):
    """set(**vars): the HF_* environment a user would set, applied the way huggingface_hub
    reads it (its constants module is evaluated at import, so it is re-evaluated here);
    everything is restored afterwards. Starts with HF_HOME in tmp_path, no token."""
    pytest.importorskip("huggingface_hub")
    import huggingface_hub.constants as constants

    saved = {k: os.environ.get(k) for k in _HF_VARS}

    def apply(**env: str | None) -> None:
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        importlib.reload(constants)

    for key in _HF_VARS:
        os.environ.pop(key, None)
    apply(HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_ETAG_TIMEOUT="3")
    yield apply
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    importlib.reload(constants)


@pytest.fixture
def hub(hf_env):
    with FakeHub(_repos()) as fake:
        hf_env(HF_ENDPOINT=fake.url)
        yield fake


# ----------------------------------------------------------------------------- files


def test_file_with_same_stem_yaml(hub):
    repo = hub.repos[APOLLO]["main"][1]
    r = resolve(parse_uri(f"hf:{APOLLO}:e2e_similar_ce_layer_6.pt"))
    assert r.path.name == "e2e_similar_ce_layer_6.pt"
    assert r.path.read_bytes() == repo["e2e_similar_ce_layer_6.pt"]
    assert r.path.with_suffix(".yaml").read_bytes() == repo["e2e_similar_ce_layer_6.yaml"]
    assert r.meta["hf_commit"] == hub.repos[APOLLO]["main"][0]
    assert r.meta["hf_repo"] == APOLLO and r.meta["hf_revision"] == "main"
    # only the two files asked for were downloaded, not the repo's other SAE
    assert sorted(hub.downloads()) == ["e2e_similar_ce_layer_6.pt", "e2e_similar_ce_layer_6.yaml"]


def test_stale_incomplete_blobs_of_killed_downloads_are_removed(hub, hf_env, tmp_path):
    """huggingface_hub leaves a killed download's `*.incomplete` blob forever; a day-old one
    is deleted on the next resolve of that repo, a fresh one (maybe in progress) stays."""
    blobs = tmp_path / "hf" / "hub" / f"models--{APOLLO.replace('/', '--')}" / "blobs"
    blobs.mkdir(parents=True)
    old, fresh = blobs / "aaa.1.incomplete", blobs / "bbb.2.incomplete"
    for f in (old, fresh):
        f.write_bytes(b"x" * 1000)
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (day_ago, day_ago))
    r = resolve(parse_uri(f"hf:{APOLLO}:e2e_similar_ce_layer_6.pt"))
    assert r.path.is_file()
    assert not old.exists() and fresh.exists()


def test_file_without_yaml(hub):
    r = resolve(parse_uri(f"hf:{APOLLO}:no_config_layer_2.pt"))
    assert r.path.read_bytes() == hub.repos[APOLLO]["main"][1]["no_config_layer_2.pt"]
    assert not r.path.with_suffix(".yaml").exists()
    assert hub.downloads() == ["no_config_layer_2.pt"]


def test_revision_selects_other_commit(hub):
    r = resolve(parse_uri(f"hf:{APOLLO}:e2e_similar_ce_layer_6.pt@v1"))
    assert r.path.read_bytes() == _bytes("old")
    assert r.meta["hf_commit"] == hub.repos[APOLLO]["v1"][0]
    assert r.meta["hf_revision"] == "v1"


def test_second_resolve_downloads_nothing_and_offline_works(hub, hf_env):
    uri = f"hf:{APOLLO}:e2e_similar_ce_layer_6.pt"
    first = resolve(parse_uri(uri))
    n = len(hub.downloads())
    again = resolve(parse_uri(uri))
    assert again.path == first.path
    assert len(hub.downloads()) == n  # metadata checks only, no bytes
    hub.stop()
    hf_env(HF_HUB_OFFLINE="1")
    offline = resolve(parse_uri(uri))
    assert offline.path == first.path
    assert offline.path.read_bytes() == first.path.read_bytes()


def test_progress_reports_bytes(hub):
    calls = []
    resolve(
        parse_uri(f"hf:{APOLLO}:e2e_similar_ce_layer_6.pt"),
        progress=lambda done, total, what: calls.append((done, total, what)),
    )
    size = len(hub.repos[APOLLO]["main"][1]["e2e_similar_ce_layer_6.pt"])
    assert (size, size, "e2e_similar_ce_layer_6.pt") in calls
    dones = [d for d, _t, w in calls if w == "e2e_similar_ce_layer_6.pt"]
    assert dones == sorted(dones) and dones[0] == 0


# ----------------------------------------------------------------------------- folders


def test_saelens_folder_fetches_only_known_files(hub):
    files = hub.repos[NP_SCE]["main"][1]
    r = resolve(parse_uri(f"hf:{NP_SCE}:6-res_sce-ajt"))
    assert r.path.is_dir() and r.path.name == "6-res_sce-ajt"
    names = sorted(p.name for p in r.path.iterdir())
    assert names == ["cfg.json", "sae_weights.safetensors", "sparsity.safetensors"]
    for name in names:
        assert (r.path / name).read_bytes() == files[f"6-res_sce-ajt/{name}"]
    assert sorted(hub.downloads()) == [f"6-res_sce-ajt/{n}" for n in names]


def test_folder_offline_from_cache_after_online_fetch(hub, hf_env):
    first = resolve(parse_uri(f"hf:{NP_SCE}:6-res_sce-ajt"))
    hub.stop()
    hf_env(HF_HUB_OFFLINE="1")
    again = resolve(parse_uri(f"hf:{NP_SCE}:6-res_sce-ajt"))
    assert again.path == first.path
    # a folder never fetched is not there offline: one clear line
    expect_source_error(
        f"hf:{NP_SCE}:2-res_sce-ajt", "local Hugging Face cache", "HF_HUB_OFFLINE=1"
    )


def test_folder_without_weights_lists_what_it_found(hub):
    expect_source_error(f"hf:{NP_SCE}:docs", "holds no SAE weights", "README.md")


def test_repo_root_as_folder(hub):
    # the Apollo repo root holds single files, not an SAE folder: say what to do
    expect_source_error(f"hf:{APOLLO}", "the repo root holds no SAE weights", "give the path")


# ----------------------------------------------------------------------------- errors


def test_missing_repo_file_folder_revision(hub):
    expect_source_error("hf:nobody/nothing:x.pt", "no Hugging Face model repo nobody/nothing")
    expect_source_error("hf:nobody/nothing:folder", "no Hugging Face model repo nobody/nothing")
    expect_source_error(f"hf:{APOLLO}:missing.pt", f"repo {APOLLO} has no file 'missing.pt'")
    expect_source_error(f"hf:{NP_SCE}:99-res_sce-ajt", "has no folder '99-res_sce-ajt'")
    expect_source_error(f"hf:{APOLLO}:e2e_similar_ce_layer_6.pt@nope", "has no revision 'nope'")


def test_offline_miss(hf_env):
    hf_env(HF_HUB_OFFLINE="1")
    expect_source_error(
        f"hf:{APOLLO}:e2e_similar_ce_layer_6.pt",
        "not in the local Hugging Face cache",
        "HF_HUB_OFFLINE=1",
    )


def test_network_down(hf_env, monkeypatch):
    import huggingface_hub.utils._http as hf_http

    # the client retries with back-off (1+2+4+8+8 s per request); skip the waiting
    no_wait = types.SimpleNamespace(
        **{n: getattr(time, n) for n in dir(time) if not n.startswith("_")}
    )
    no_wait.sleep = lambda seconds: None
    monkeypatch.setattr(hf_http, "time", no_wait)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hf_env(HF_ENDPOINT=f"http://127.0.0.1:{port}")
    expect_source_error(
        f"hf:{APOLLO}:e2e_similar_ce_layer_6.pt", "cannot be asked", "no connection"
    )
    expect_source_error(f"hf:{NP_SCE}:6-res_sce-ajt", "cannot be asked", "no connection")


# ----------------------------------------------------------------------------- hand-built cache


def _populate_cache(cache: Path, repo: str, commit: str, files: dict[str, bytes]) -> None:
    """The hub cache layout: blobs by etag, snapshot entries as relative symlinks, refs/main."""
    storage = cache / ("models--" + repo.replace("/", "--"))
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(commit)
    for path, data in files.items():
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = storage / "snapshots" / commit / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


def test_prepopulated_cache_offline_via_environment(tmp_path):
    """A fresh interpreter with HF_HOME + HF_HUB_OFFLINE=1 only, as a user would run it."""
    pytest.importorskip("huggingface_hub")
    commit = _commit("prepopulated")
    files = {
        "6-res_sce-ajt/cfg.json": b'{"d_in": 4}',
        "6-res_sce-ajt/sae_weights.safetensors": _bytes("w"),
        "e2e_similar_l0_layer_6.pt": _bytes("pt"),
        "e2e_similar_l0_layer_6.yaml": b"seed: 0\n",
    }
    _populate_cache(tmp_path / "hf" / "hub", NP_SCE, commit, files)
    script = (
        "import json, sys\n"
        "from sae_backend.sources import resolve\n"
        "from sae_backend.uri import parse_uri\n"
        "from sae_backend.errors import SourceError\n"
        "out = {}\n"
        "for uri in sys.argv[1:]:\n"
        "    try:\n"
        "        r = resolve(parse_uri(uri))\n"
        "        out[uri] = [str(r.path), r.meta.get('hf_commit')]\n"
        "    except SourceError as e:\n"
        "        out[uri] = ['error', str(e)]\n"
        "print(json.dumps(out))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")
    uris = [
        f"hf:{NP_SCE}:6-res_sce-ajt",
        f"hf:{NP_SCE}:e2e_similar_l0_layer_6.pt",
        f"hf:{NP_SCE}:2-res_sce-ajt",
    ]
    done = subprocess.run(
        [sys.executable, "-c", script, *uris],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    snapshot = (
        tmp_path / "hf" / "hub" / ("models--" + NP_SCE.replace("/", "--")) / "snapshots" / commit
    )
    folder, file, missing = (out[u] for u in uris)
    assert Path(folder[0]) == snapshot / "6-res_sce-ajt" and folder[1] == commit
    assert sorted(p.name for p in Path(folder[0]).iterdir()) == [
        "cfg.json",
        "sae_weights.safetensors",
    ]
    assert Path(file[0]).read_bytes() == files["e2e_similar_l0_layer_6.pt"]
    assert Path(file[0]).with_suffix(".yaml").read_bytes() == files["e2e_similar_l0_layer_6.yaml"]
    assert missing[0] == "error" and "HF_HUB_OFFLINE=1" in missing[1]


# ----------------------------------------------------------------------------- saelens:


def test_saelens_builtin_table_without_sae_lens(hub, monkeypatch):
    from sae_backend.sources import saelens

    monkeypatch.setattr(saelens, "pretrained_yaml_path", lambda: None)  # as if not installed
    r = resolve(parse_uri("saelens:gpt2-small-res_sce-ajt/blocks.6.hook_resid_pre"))
    assert r.path.name == "6-res_sce-ajt"
    assert sorted(p.name for p in r.path.iterdir()) == [
        "cfg.json",
        "sae_weights.safetensors",
        "sparsity.safetensors",
    ]
    assert r.meta["neuronpedia_id"] == "gpt2-small/6-res_sce-ajt"
    assert r.meta["saelens_release"] == "gpt2-small-res_sce-ajt"
    assert r.meta["hf_repo"] == NP_SCE


def test_saelens_unknown_names_list_the_known_ones(monkeypatch):
    from sae_backend.sources import saelens

    monkeypatch.setattr(saelens, "pretrained_yaml_path", lambda: None)
    msg = expect_source_error(
        "saelens:gpt2-small-res-jb/blocks.6.hook_resid_pre", "unknown SAELens release"
    )
    for code in ("sce", "scefr", "scl", "sle", "slefr", "sll"):
        assert f"gpt2-small-res_{code}-ajt" in msg
    assert "install sae-lens" in msg
    expect_source_error(
        "saelens:gpt2-small-res_sll-ajt/blocks.7.hook_resid_pre",
        "has no SAE 'blocks.7.hook_resid_pre'",
        "blocks.10.hook_resid_pre, blocks.2.hook_resid_pre, blocks.6.hook_resid_pre",
    )


def test_saelens_reads_installed_pretrained_yaml_without_importing_it(hub, tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "sae_lens"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('sae_lens must not be imported')\n")
    (pkg / "pretrained_saes.yaml").write_text(
        "my-release:\n"
        f"  repo_id: {NP_SCE}\n"
        "  model: gpt2-small\n"
        "  saes:\n"
        "    - id: layer-two\n"
        "      path: 2-res_sce-ajt\n"
        "      neuronpedia: gpt2-small/2-mine\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "sae_lens", raising=False)
    r = resolve(parse_uri("saelens:my-release/layer-two"))
    assert r.path.name == "2-res_sce-ajt"
    assert r.meta["neuronpedia_id"] == "gpt2-small/2-mine"
    assert "sae_lens" not in sys.modules
    # the built-in Apollo table still answers for releases the installed file lacks
    r2 = resolve(parse_uri("saelens:gpt2-small-res_sce-ajt/blocks.6.hook_resid_pre"))
    assert r2.path.name == "6-res_sce-ajt"
    msg = expect_source_error("saelens:other/x", "unknown SAELens release")
    assert "1 releases of the installed sae_lens" in msg


# ----------------------------------------------------------------------------- through load()


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_load_end_to_end(hf_env, tmp_path, monkeypatch):
    """hf: and saelens: URIs -> Dictionary, against files written like the real libraries do."""
    loader = pytest.importorskip("sae_backend.loader")
    import numpy as np
    from factories import planted, unit_rows, write_e2e_hf, write_saelens

    from sae_backend.sources import saelens

    monkeypatch.setattr(saelens, "pretrained_yaml_path", lambda: None)
    e2e, sl = planted(d=6, seed=1), planted(d=6, seed=2)
    raw = tmp_path / "raw"
    write_e2e_hf(raw / "e2e_similar_ce_layer_6.pt", e2e.decoder, e2e.encoder, config={"seed": 0})
    density = np.linspace(0.0, 0.5, 10)
    write_saelens(
        raw / "np" / "6-res_sce-ajt",
        sl.decoder,
        sl.encoder,
        hook=POS_HF,
        neuronpedia_id="gpt2-small/6-res_sce-ajt",
        density=density,
    )
    repos = {
        APOLLO: {
            "main": (
                _commit("a"),
                {
                    "e2e_similar_ce_layer_6.pt": (raw / "e2e_similar_ce_layer_6.pt").read_bytes(),
                    "e2e_similar_ce_layer_6.yaml": (
                        raw / "e2e_similar_ce_layer_6.yaml"
                    ).read_bytes(),
                },
            )
        },
        NP_SCE: {"main": (_commit("n"), _tree_bytes(raw / "np"))},
    }
    with FakeHub(repos) as fake:
        hf_env(HF_ENDPOINT=fake.url)
        d = loader.load(f"hf:{APOLLO}:e2e_similar_ce_layer_6.pt")
        np.testing.assert_allclose(d.decoder, unit_rows(e2e.decoder)[0], atol=1e-6)
        assert d.meta.format == "e2e_sae" and d.meta.extra["hf_repo"] == APOLLO

        s = loader.load("saelens:gpt2-small-res_sce-ajt/blocks.6.hook_resid_pre")
        np.testing.assert_allclose(s.decoder, unit_rows(sl.decoder)[0], atol=1e-6)
        np.testing.assert_allclose(s.density, density, rtol=1e-4, atol=1e-9)
        assert s.meta.neuronpedia_id == "gpt2-small/6-res_sce-ajt"
        assert s.meta.hook == POS_HF and s.meta.format == "saelens"
        assert s.meta.extra["saelens_release"] == "gpt2-small-res_sce-ajt"
