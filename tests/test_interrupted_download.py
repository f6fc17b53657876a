"""A loader process SIGKILLed in the middle of a download, then a retry.

What a user sees when the app or a script dies mid-download: the next load must give the right
dictionary, never one built from a truncated file. For each remote source (W&B through the
loopback fake W&B backend, Hugging Face through the loopback FakeHub):

1. a separate interpreter runs `sae_backend.load(uri)` through `StallingProxy`, a loopback TCP
   proxy that forwards the server's bytes until the weights file is part-way through and then
   forwards nothing more (a transfer slowed to a halt: the kill lands mid-transfer every time,
   with no timing guesses);
2. once the partial file on disk holds some but not all of the bytes, that process and its
   children (the W&B client's wandb-core) get SIGKILL: no `finally`, no cleanup;
3. nothing may carry the final name: no checkpoint or manifest in the W&B run folder, no hub
   blob or snapshot entry for the file;
4. a retry in this process (server reached directly) must give the dictionary of the original
   weights (float64 reference), and a third load must make no network call at all.

A third test kills a loader while it writes the dictionary disk cache: no entry may survive.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from sae_backend import settings
from sae_backend.cache import ArrayCache
from sae_backend.loader import load
from sae_backend.sources._download import PARTIAL_PREFIX
from sae_backend.sources.wandb import MANIFEST, run_folder
from tests.factories import unit_rows, write_e2e_folder, write_e2e_hf
from tests.support import wandb_client_env
from tests.test_sources_hf import FakeHub, _commit, hf_env  # noqa: F401  (a fixture)

REPO_ROOT = Path(__file__).resolve().parents[1]
_TESTING = REPO_ROOT.parent / "shared" / "testing"

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").is_file(), reason="needs Linux /proc to find child processes"
)

KEY = "k" * 40  # the W&B client wants 40+ [A-Za-z0-9_] characters
ENTITY, PROJECT, RUN = "sparsify", "gpt2", "killed"
POS = "blocks.6.hook_resid_pre"
HF_REPO, HF_FILE = "apollo-research/e2e-saes-gpt2", "e2e_similar_ce_layer_6.pt"
WAIT_LIMIT_S = 90.0  # a bound on waits for the child process (a loaded CI box is slow)

# The child: one load, as a user's script or the app would run it.
CHILD = "import sys, sae_backend; sae_backend.load(sys.argv[1]); print('loaded', flush=True)"


# ----------------------------------------------------------------------------- throttling proxy


class StallingProxy:
    """Loopback TCP proxy that stops forwarding a response stream after `stall_after` bytes.

    Client->server bytes pass freely. Server->client bytes of each connection pass in chunks of
    at most `chunk` bytes until that connection has delivered `stall_after` bytes; then it
    forwards nothing more (the client waits, its socket open) until `close()`. Metadata replies
    are small, so with `stall_after` inside the weights file the stall falls mid-file.
    """

    def __init__(self, upstream_port: int, stall_after: int, chunk: int = 64 * 1024):
        self.upstream = ("127.0.0.1", upstream_port)
        self.stall_after = stall_after
        self.chunk = chunk
        self.stalled = threading.Event()  # some connection reached stall_after
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._accept, name="proxy accept", daemon=True).start()

    def __enter__(self) -> StallingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            for s in [self._server, *self._sockets]:
                with contextlib.suppress(OSError):
                    s.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
                upstream = socket.create_connection(self.upstream)
            except OSError:
                return
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst, limit in ((client, upstream, None), (upstream, client, self.stall_after)):
                threading.Thread(target=self._pump, args=(src, dst, limit), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while not self._closed.is_set():
                data = src.recv(self.chunk)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                if limit is not None and sent + len(data) >= limit:
                    dst.sendall(data[: limit - sent])
                    self.stalled.set()
                    self._closed.wait()  # hold the connection open, forward nothing
                    return
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass  # closed by close() or by the killed client


# ----------------------------------------------------------------------------- child processes


def _descendants(pid: int) -> list[int]:
    """Process ids below `pid` (children, grandchildren, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _sigkill_tree(proc: subprocess.Popen) -> list[int]:
    """SIGKILL `proc` and everything it started (by pid); returns the pids signalled."""
    pids = [proc.pid, *_descendants(proc.pid)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return pids


@contextlib.contextmanager
def loader_process(uri: str, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """A fresh interpreter running load(uri); whatever is left of it is killed on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, uri],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            _sigkill_tree(proc)


def child_env(**extra: str) -> dict[str, str]:
    """This environment without W&B / HF / proxy settings, plus `extra` (SAE_CACHE_DIR is the
    test's private one, set by conftest)."""
    drop = ("WANDB_", "HF_", "HUGGING", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(drop)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def wait_until(check: Callable[[], bool], proc: subprocess.Popen, log: Path, what: str) -> None:
    """Poll `check` until true; fail with the child's output if it exits or the bound passes."""
    deadline = time.monotonic() + WAIT_LIMIT_S
    while not check():
        if proc.poll() is not None:
            pytest.fail(f"loader exited ({proc.returncode}) before {what}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {WAIT_LIMIT_S:.0f} s:\n{log.read_text()}")
        time.sleep(0.05)


def kill_mid_download(
    proc: subprocess.Popen, log: Path, proxy: StallingProxy, written: Callable[[], list[Path]]
) -> Path:
    """Wait until the transfer stalled with bytes of the weights on disk, SIGKILL the loader and
    everything it started; return the one file holding those bytes (wherever it is)."""

    def midway() -> bool:
        return proxy.stalled.is_set() and any(p.stat().st_size > 0 for p in written())

    wait_until(midway, proc, log, "a partly written weights file")
    assert proc.poll() is None  # still downloading when killed
    _sigkill_tree(proc)
    assert proc.returncode == -signal.SIGKILL, log.read_text()
    (partial,) = written()
    return partial


def quiet_connection_errors(httpd) -> None:
    """Let a stdlib HTTP server ignore clients that vanish mid-request (the killed loader) instead
    of printing a traceback; other errors are still reported."""
    report = httpd.handle_error

    def handle_error(request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            report(request, client_address)

    httpd.handle_error = handle_error


# ----------------------------------------------------------------------------- data


def dictionary_rows(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random decoder/encoder feature rows [n, d] with some zero (dead) decoder rows."""
    rng = np.random.default_rng(seed)
    dec = rng.standard_normal((n, d)) * rng.uniform(0.1, 5.0, (n, 1))
    dec[::97] = 0.0
    return dec, rng.standard_normal((n, d))


def assert_matches(got, dec: np.ndarray, enc: np.ndarray, alive: np.ndarray) -> None:
    """The loaded Dictionary against the float64 reference of the original weights."""
    unit_dec, norms = unit_rows(dec)
    assert got.n_features == dec.shape[0] and got.d_model == dec.shape[1]
    np.testing.assert_allclose(got.decoder, unit_dec, atol=1e-6)
    np.testing.assert_allclose(got.encoder, unit_rows(enc)[0], atol=1e-6)
    np.testing.assert_allclose(got.decoder_norms, norms, rtol=1e-6)
    np.testing.assert_array_equal(got.alive, alive)


# ----------------------------------------------------------------------------- W&B


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """The W&B client settings of the fake (also handed to the child), set in this process."""
    if not (_TESTING / "fake_wandb.py").is_file():
        pytest.skip(f"fake W&B backend not found at {_TESTING}/fake_wandb.py (team test double)")
    pytest.importorskip("wandb")
    env = {"WANDB_HTTP_TIMEOUT": "5", "WANDB_API_KEY": KEY, **wandb_client_env(tmp_path / "wb")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def test_wandb_download_killed_midway_then_retry(tmp_path, wandb_env, monkeypatch):
    if str(_TESTING) not in sys.path:
        sys.path.insert(0, str(_TESTING))
    from fake_wandb import FakeWandbServer

    dec, enc = dictionary_rows(8192, 64, seed=6)  # a 4 MB checkpoint
    src = tmp_path / "runs" / ENTITY / PROJECT / RUN
    config = {"saes": {"sae_positions": POS}}
    write_e2e_folder(src, {400000: {POS: (dec, enc)}}, config=config)
    said_alive = [i for i in range(dec.shape[0]) if i % 5]  # the run summary's alive list
    summary = {f"sparsity/alive_dict_elements_indices_final/{POS}": said_alive}
    meta = {"name": "killed run", "state": "finished", "config": config, "summary": summary}
    (src / "_run.json").write_text(json.dumps(meta))
    weights = (src / "samples_400000.pt").read_bytes()
    folder = run_folder(ENTITY, PROJECT, RUN)
    uri = f"wandb:{ENTITY}/{PROJECT}/{RUN}"

    def weights_on_disk() -> list[Path]:
        return [p for p in folder.rglob("samples_400000.pt") if p.is_file()]

    with (
        FakeWandbServer(str(tmp_path / "runs"), api_key=KEY, ttl=300) as server,
        StallingProxy(server.port, stall_after=len(weights) // 2) as proxy,
    ):
        env = child_env(**wandb_env, WANDB_BASE_URL=proxy.url)
        with loader_process(uri, env, tmp_path / "child.log") as proc:
            partial = kill_mid_download(proc, tmp_path / "child.log", proxy, weights_on_disk)
        written = partial.stat().st_size
        assert 0 < written < len(weights)
        assert partial.parent.name.startswith(PARTIAL_PREFIX)  # in a temporary folder
        # nothing under a final name: no checkpoint, no manifest (the small config, fetched
        # first and complete, may be there, and then it is intact)
        assert not (folder / "samples_400000.pt").exists()
        assert not (folder / MANIFEST).exists()
        if (folder / "final_config.yaml").exists():
            assert (folder / "final_config.yaml").read_bytes() == (
                src / "final_config.yaml"
            ).read_bytes()

        monkeypatch.setenv("WANDB_BASE_URL", server.base_url)  # the retry: no throttle
        alive = np.isin(np.arange(dec.shape[0]), said_alive) & (np.abs(dec).sum(axis=1) > 0)
        again = load(uri)
        assert_matches(again, dec, enc, alive)
        assert (folder / "samples_400000.pt").read_bytes() == weights
        # the killed process's partial file, if still there, was left alone
        assert not partial.exists() or partial.stat().st_size == written

        seen = len(server.requests)
        third = load(uri)
        assert len(server.requests) == seen  # no network call: manifest + files on disk
        assert third.fingerprint == again.fingerprint
        assert_matches(third, dec, enc, alive)


# ----------------------------------------------------------------------------- Hugging Face


def test_hf_download_killed_midway_then_retry(tmp_path, hf_env):  # noqa: F811  (the fixture)
    # huggingface_hub writes a download in 10 MiB pieces (DOWNLOAD_CHUNK_SIZE): the file must
    # be larger than that for a partial file to show bytes before the end.
    dec, enc = dictionary_rows(24576, 64, seed=7)  # a 12.6 MB .pt
    raw = write_e2e_hf(tmp_path / "raw" / HF_FILE, dec, enc, config={"seed": 0})
    weights = raw.read_bytes()
    commit = _commit("killed")
    files = {HF_FILE: weights, raw.with_suffix(".yaml").name: raw.with_suffix(".yaml").read_bytes()}
    storage = tmp_path / "hf" / "hub" / ("models--" + HF_REPO.replace("/", "--"))
    blob = storage / "blobs" / hashlib.sha256(weights).hexdigest()  # FakeHub's ETag
    pointer = storage / "snapshots" / commit / HF_FILE
    uri = f"hf:{HF_REPO}:{HF_FILE}"

    def weights_on_disk() -> list[Path]:
        return [p for p in storage.glob("blobs/*") if p.is_file()]

    with FakeHub({HF_REPO: {"main": (commit, files)}}) as hub:
        quiet_connection_errors(hub.httpd)
        port = int(hub.url.rsplit(":", 1)[1])
        with StallingProxy(port, stall_after=len(weights) - 1_000_000) as proxy:
            env = child_env(
                HF_HOME=str(tmp_path / "hf"),
                HF_ENDPOINT=proxy.url,
                HF_HUB_DISABLE_TELEMETRY="1",
                HF_HUB_ETAG_TIMEOUT="3",
            )
            with loader_process(uri, env, tmp_path / "child.log") as proc:
                partial = kill_mid_download(proc, tmp_path / "child.log", proxy, weights_on_disk)
        written = partial.stat().st_size
        assert 0 < written < len(weights)
        assert partial.name.endswith(".incomplete")  # the hub's temporary name
        # no blob under its final (ETag) name, no snapshot entry pointing anywhere
        assert not blob.exists()
        assert not pointer.exists() and not pointer.is_symlink()

        hf_env(HF_ENDPOINT=hub.url)  # the retry: no throttle
        alive = np.abs(dec).sum(axis=1) > 0
        again = load(uri)
        assert_matches(again, dec, enc, alive)
        assert pointer.resolve() == blob.resolve()
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
        assert hub.downloads().count(HF_FILE) == 2  # the killed transfer, then a whole one

        requests = len(hub.log)
        hub.stop()
        hf_env(HF_HUB_OFFLINE="1")
        third = load(uri)  # served from the hub cache with the Hub gone
        assert len(hub.log) == requests
        assert third.fingerprint == again.fingerprint
        assert_matches(third, dec, enc, alive)


# ----------------------------------------------------------------------------- dictionary cache

# The child tears the cache's value file: it writes half of the entry, then SIGKILLs itself,
# as a kill landing in the middle of the cache write would. diskcache writes the value file
# before it records the entry in its database.
TORN_CACHE_CHILD = """
import os, signal, sys
import diskcache
import sae_backend

write = diskcache.Disk._write

def torn(self, full_path, iterator, mode, encoding=None):
    data = b"".join(iterator)
    print(full_path, len(data), flush=True)

    def half_then_die():
        yield data[: len(data) // 2]
        os.kill(os.getpid(), signal.SIGKILL)

    return write(self, full_path, half_then_die(), mode, encoding)

diskcache.Disk._write = torn
sae_backend.load(sys.argv[1])
print("loaded", flush=True)
"""


def test_kill_during_cache_write_leaves_no_entry(tmp_path):
    pytest.importorskip("diskcache")
    # the entry (norms and alive, 5 bytes a feature: unit rows are read from the files, not
    # cached) above diskcache's 32 KB in-row limit, so it goes to a value file
    dec, enc = dictionary_rows(8192, 8, seed=8)
    path = write_e2e_hf(tmp_path / "sae" / "layer_6.pt", dec, enc)
    done = subprocess.run(
        [sys.executable, "-c", TORN_CACHE_CHILD, str(path)],
        cwd=REPO_ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=WAIT_LIMIT_S,
    )
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr
    value_file, size = done.stdout.strip().rsplit(maxsplit=1)
    assert 0 < Path(value_file).stat().st_size < int(size)  # the torn value file is there

    import diskcache

    with diskcache.Cache(str(settings.cache_dir())) as raw_cache:
        assert len(raw_cache) == 0  # but no entry refers to it

    alive = np.abs(dec).sum(axis=1) > 0
    store = ArrayCache(settings.cache_dir())
    again = load(str(path), cache=store)  # would block forever if the key lock were stuck
    assert_matches(again, dec, enc, alive)
    assert (store.stats.misses, store.stats.hits) == (1, 0)
    later = ArrayCache(settings.cache_dir())  # as a new process would open it
    third = load(str(path), cache=later)
    assert (later.stats.misses, later.stats.hits) == (0, 1)  # the retry's entry is whole
    assert third.fingerprint == again.fingerprint
    assert_matches(third, dec, enc, alive)
