"""Hosted mode's rules: which sources a visitor may load, settings parsing, redaction."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sae_backend.errors import InputError
from sae_backend.hosting import Hosted, hosted_settings, read_settings


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """data/ (shared) with a file and an SAE-like folder; secret/ outside it."""
    data, secret = tmp_path / "data", tmp_path / "secret"
    (data / "sae").mkdir(parents=True)
    secret.mkdir()
    (data / "w.pt").write_bytes(b"x")
    (data / "sae" / "cfg.json").write_text("{}")
    (secret / "key.pt").write_bytes(b"secret")
    (secret / "cfg.json").write_text("{}")
    return {"data": data, "secret": secret, "root": tmp_path}


def hosted(tree, **kw) -> Hosted:
    return Hosted(data_dirs=(tree["data"],), **kw)


def test_paths_inside_the_data_folder_are_allowed(tree) -> None:
    s = hosted(tree)
    assert s.check_source(str(tree["data"] / "w.pt")) == str((tree["data"] / "w.pt").resolve())
    assert s.check_source("w.pt") == str((tree["data"] / "w.pt").resolve())  # relative
    assert s.check_source("sae") == str((tree["data"] / "sae").resolve())
    assert s.check_source("w.pt#blocks.6") == str((tree["data"] / "w.pt").resolve()) + "#blocks.6"


@pytest.mark.parametrize(
    "uri",
    [
        "../secret/key.pt",
        "sae/../../secret/key.pt",
        "/etc/passwd",
        "~/.ssh/id_rsa",
        "{secret}/key.pt",
        "../../../../../../etc/shadow",
    ],
)
def test_escapes_are_refused(tree, uri: str) -> None:
    s = hosted(tree)
    with pytest.raises(InputError) as e:
        s.check_source(uri.format(secret=tree["secret"]))
    msg = str(e.value)
    assert "\n" not in msg
    assert "not found in the data folders this server shares" in msg


def test_symlink_escapes_are_refused(tree) -> None:
    data, secret = tree["data"], tree["secret"]
    (data / "link.pt").symlink_to(secret / "key.pt")
    (data / "linked_dir").symlink_to(secret)
    inner = data / "sneaky"
    inner.mkdir()
    (inner / "sae_weights.safetensors").symlink_to(secret / "key.pt")
    deep = data / "deep" / "sub"
    deep.mkdir(parents=True)
    (deep / "cfg.json").symlink_to(secret / "cfg.json")
    nested = data / "nested"
    nested.mkdir()
    (nested / "out").symlink_to(secret)
    s = hosted(tree)
    for uri in ("link.pt", "linked_dir", "linked_dir/key.pt"):
        with pytest.raises(InputError, match="not found in the data folders"):
            s.check_source(uri)
    for uri, name in (("sneaky", "sae_weights"), ("deep", "cfg.json"), ("nested", "out")):
        with pytest.raises(InputError, match=f"{name}.* links outside the data folders"):
            s.check_source(uri)
    # a link that stays inside the data folder is fine
    (data / "alias.pt").symlink_to(data / "w.pt")
    assert s.check_source("alias.pt") == str((data / "w.pt").resolve())


def test_missing_paths_nul_and_no_data_folder(tree) -> None:
    s = hosted(tree)
    with pytest.raises(InputError, match="not found in the data folders"):
        s.check_source("missing.pt")
    with pytest.raises(InputError, match="NUL"):
        s.check_source("w.pt\x00../../etc/passwd")
    with pytest.raises(InputError, match="loads no local files"):
        Hosted().check_source("w.pt")


def test_remote_schemes_only_when_allowed(tree) -> None:
    s = hosted(tree, remote=frozenset({"hf"}))
    assert s.check_source("hf:owner/repo:x.pt") == "hf:owner/repo:x.pt"
    with pytest.raises(InputError, match="wandb: sources are turned off on this server"):
        s.check_source("wandb:sparsify/gpt2/tvj2owza")
    with pytest.raises(InputError, match=r"allowed: none"):
        hosted(tree).check_source("saelens:rel/sae")


def test_read_settings(tmp_path: Path, tree) -> None:
    f = tmp_path / "hosted.toml"
    f.write_text(
        'data_dirs = ["data"]\nremote = ["hf", "wandb"]\nauth = "oidc"\n'
        'allowed_emails = ["A@x.org"]\nmemory_budget_mb = 64\nupload_limit_mb = 5\n'
    )
    s = read_settings(f)
    assert s.data_dirs == (tree["data"].resolve(),)
    assert s.remote == {"hf", "wandb"} and s.auth == "oidc" and s.allowed_emails == ("a@x.org",)
    assert (s.memory_budget_mb, s.upload_limit_mb, s.uploads) == (64, 5, True)


@pytest.mark.parametrize(
    "text, needle",
    [
        ('auth = "magic"', "auth must be one of"),
        ('remote = ["ftp"]', "remote may list only"),
        ('data_dirs = ["nowhere"]', "does not exist"),
        ("memory_budget_mb = 0", "limits must be positive"),
        ("colour = 1", "unknown keys"),
        ("memory_budget_mb = ", "cannot read"),
        ('memory_budget_mb = "lots"', "memory_budget_mb: expected a whole number, got 'lots'"),
        ("memory_budget_mb = true", "memory_budget_mb: expected a whole number, got True"),
        ('uploads = "no"', "uploads: expected true or false, got 'no'"),
        ('remote = "hf"', "remote: expected a list of strings"),
        ("auth = 1", "auth: expected a string"),
    ],
)
def test_bad_settings_fail_in_one_line(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "hosted.toml"
    f.write_text(text + "\n")
    with pytest.raises(InputError) as e:
        read_settings(f)
    assert needle in str(e.value) and str(f) in str(e.value) and "\n" not in str(e.value)


def test_hosted_settings_follow_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SAE_HOSTED", raising=False)
    assert hosted_settings() is None
    f = tmp_path / "h.toml"
    f.write_text('auth = "none"\n')
    monkeypatch.setenv("SAE_HOSTED", str(f))
    assert hosted_settings().auth == "none"


def test_redact_blanks_secrets_and_private_folders(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("SAE_PASSWORD", "hunter2-long")
    s = Hosted(upload_dir=tmp_path / "uploads")
    msg = f"{tmp_path / 'uploads'}/ab/x.pt: bad; key {'k' * 40}; pw hunter2-long; {os.environ['SAE_CACHE_DIR']}/y"
    out = s.redact(msg)
    assert "<upload>/ab/x.pt" in out and "k" * 40 not in out and "hunter2" not in out
    assert "<cache>/y" in out and str(tmp_path) not in out


def test_display_shows_data_paths_relative_and_uploads_redacted(tree, tmp_path) -> None:
    s = hosted(tree, upload_dir=tmp_path / "up")
    real = s.check_source("sae")
    assert s.display(real) == "data/sae"
    assert s.display(str(tmp_path / "up" / "ab12" / "w.pt")) == "<upload>/ab12/w.pt"
    assert s.display("hf:o/r:x.pt") == "hf:o/r:x.pt"


def test_uri_errors_quote_a_long_source_briefly() -> None:
    from sae_backend.errors import URIError
    from sae_backend.uri import parse_uri

    for uri in ("wandb:" + "x/" * 3000, "hf:" + "a" * 6000, "saelens:" + "?" * 6000):
        with pytest.raises(URIError) as e:
            parse_uri(uri)
        assert len(str(e.value)) < 300 and "…" in str(e.value)


def _serve():
    """hosted/serve.py as a module (it is a script, not part of the package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "hosted" / "serve.py"
    spec = importlib.util.spec_from_file_location("serve", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_settings_parse_and_give_server_options(tmp_path, monkeypatch, capsys):
    example = Path(__file__).resolve().parents[1] / "hosted" / "settings.example.toml"
    (tmp_path / "hosted").mkdir()
    (tmp_path / "data").mkdir()
    copy = tmp_path / "hosted" / "settings.toml"
    copy.write_text(example.read_text())
    s = read_settings(copy)
    assert s.data_dirs == ((tmp_path / "data").resolve(),) and s.auth == "password"
    serve = _serve()
    monkeypatch.setattr(serve, "secrets", dict)
    monkeypatch.setenv("SAE_PASSWORD", "pw-for-the-test")
    assert serve.main([str(copy), "--print", "--port", "9999"]) == 0
    cmd = capsys.readouterr().out
    for flag in (
        "--server.headless=true",
        "--server.enableXsrfProtection=true",
        "--browser.gatherUsageStats=false",
        "--client.showErrorDetails=none",
        "--server.maxUploadSize=512",
        "--server.port=9999",
        "--server.address=0.0.0.0",
    ):
        assert flag in cmd
    assert "pw-for-the-test" not in cmd


def test_serve_refuses_to_start_without_what_the_login_needs(tmp_path, monkeypatch, capsys):
    serve = _serve()
    monkeypatch.setattr(serve, "secrets", dict)
    monkeypatch.delenv("SAE_PASSWORD", raising=False)
    f = tmp_path / "h.toml"
    for text, needle in (
        ('auth = "password"\n', "needs SAE_PASSWORD"),
        ('auth = "oidc"\n', "needs an [auth] section"),
        ('auth = "nope"\n', "auth must be one of"),
    ):
        f.write_text(text)
        assert serve.main([str(f), "--print"]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1
    monkeypatch.setattr(serve, "secrets", lambda: {"auth": {"redirect_uri": "https://x/cb"}})
    f.write_text('auth = "oidc"\n')
    assert serve.main([str(f), "--print"]) == 2
    assert "with cookie_secret" in capsys.readouterr().err
    f.write_text('auth = "proxy"\nallowed_hosts = ["sae.example.org"]\n')
    assert serve.main([str(f), "--print"]) == 0
    out = capsys.readouterr().out
    assert "--server.address=127.0.0.1" in out  # behind a proxy: loopback only
    assert "--server.allowedHosts=sae.example.org" in out


_PIECES = ["..", ".", "/", "~", "data", "sae", "secret", "w.pt", "#", "%2e", "\\", "link",
           "wandb:", "hf:", "saelens:", "file://", "//", " ", "\x00", "é"]  # fmt: skip


def test_any_string_is_either_allowed_inside_the_data_folder_or_refused_in_one_line(tree):
    """Fuzz the source rules: whatever a visitor types, the answer is a path that really is
    inside the data folder, a remote URI the settings allow, or one SAEError line."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from sae_backend.errors import SAEError

    (tree["data"] / "link").symlink_to(tree["secret"])
    s = hosted(tree, remote=frozenset({"hf"}))
    root = tree["data"].resolve()

    @settings(max_examples=400, deadline=None, derandomize=True, database=None)
    @given(st.lists(st.one_of(st.sampled_from(_PIECES), st.text(max_size=8)), max_size=8))
    def check(pieces):
        uri = "".join(pieces)
        try:
            out = s.check_source(uri)
        except SAEError as e:
            assert "\n" not in str(e) and len(str(e)) < 600
            return
        if out.startswith("hf:"):
            return
        path = Path(out.split("#", 1)[0]).resolve()
        assert path == root or path.is_relative_to(root), (uri, out)

    check()


def test_a_home_folder_of_no_user_is_one_uri_error() -> None:
    from sae_backend.errors import URIError
    from sae_backend.uri import parse_uri

    with pytest.raises(URIError, match="no such home folder"):
        parse_uri("~no-such-user-here/sae.pt")


def test_what_display_shows_is_accepted_back(tree, tmp_path) -> None:
    """Shared links carry the displayed form: data/x and <upload>/hash/x load again."""
    uploads = tmp_path / "up"
    (uploads / "ab12").mkdir(parents=True)
    (uploads / "ab12" / "w.pt").write_bytes(b"x")
    s = hosted(tree, upload_dir=uploads)
    for uri in ("sae", "w.pt#blocks.3", str(uploads / "ab12" / "w.pt")):
        real = s.check_source(uri) if not uri.startswith(str(uploads)) else uri
        shown = s.display(real)
        assert str(tmp_path) not in shown
        assert s.check_source(shown) == str(Path(real.split("#")[0]).resolve()) + (
            "#blocks.3" if "#" in uri else ""
        )
    with pytest.raises(InputError, match="not found"):
        s.check_source("<upload>/../secret/key.pt")
    (uploads / "out").symlink_to(tree["secret"])
    with pytest.raises(InputError, match="not found"):
        s.check_source("<upload>/out/key.pt")


def test_refusals_do_not_tell_whether_a_path_exists_elsewhere(tree) -> None:
    """An existing file outside the data folders and a missing one get the same words (only
    the quoted input differs), so the URI box cannot probe the server's file system."""
    s = hosted(tree)
    secret = tree["secret"] / "key.pt"
    assert secret.is_file()
    messages = []
    for uri in (
        str(secret),
        str(secret.with_name("no-such-file.pt")),
        "/etc/passwd",
        "/etc/no-such-file",
        "../secret/key.pt",
        "../secret/nothing.pt",
    ):
        with pytest.raises(InputError) as e:
            s.check_source(uri)
        messages.append(str(e.value).replace(repr(uri), "SRC"))
    assert len(set(messages)) == 1, messages


def test_file_scheme_inside_the_data_folder_loads_like_the_plain_path(tree) -> None:
    s = hosted(tree)
    plain = str(tree["data"] / "w.pt")
    assert s.check_source("file:" + plain) == s.check_source(plain) == str(Path(plain).resolve())
    assert s.check_source(f"file:{plain}#blocks.3") == str(Path(plain).resolve()) + "#blocks.3"
    with pytest.raises(InputError, match="not found in the data folders"):
        s.check_source("file:" + str(tree["secret"] / "key.pt"))
