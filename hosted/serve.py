"""Run the dashboard as a shared server: `python hosted/serve.py SETTINGS.toml [--port N]`.

Why a launcher rather than a second .streamlit/config.toml: Streamlit reads one config file
from the working folder, which is the laptop profile. This script checks the hosted settings
and the secrets they need *before* anyone can connect, then starts `streamlit run app.py` with
the server options on its command line (they override the file) and `$SAE_HOSTED` pointing
at the settings, which switches the app into hosted mode (login, source rules, budgets).
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sae_backend import settings  # noqa: E402
from sae_backend.errors import SAEError  # noqa: E402
from sae_backend.hosting import ENV_SETTINGS, PASSWORD_SECRET, Hosted, read_settings  # noqa: E402


def streamlit_options(s: Hosted, address: str, port: int) -> list[str]:
    """Streamlit's server settings for a shared instance, as command-line flags."""
    options = {
        "server.headless": "true",
        "server.address": address,
        "server.port": str(port),
        "server.enableXsrfProtection": "true",
        "server.enableCORS": "true",
        "server.maxUploadSize": str(s.upload_limit_mb),
        "server.fileWatcherType": "none",
        "server.runOnSave": "false",
        "server.enableStaticServing": "false",
        "browser.gatherUsageStats": "false",
        "client.showErrorDetails": "none",  # no tracebacks (paths, code) in the browser
        "client.showErrorLinks": "false",
        "client.toolbarMode": "viewer",
        "global.developmentMode": "false",
    }
    flags = [f"--{k}={v}" for k, v in options.items()]
    return flags + [f"--server.allowedHosts={h}" for h in s.allowed_hosts]


def secrets() -> dict:
    """The secrets Streamlit will see: the project's .streamlit/secrets.toml, else the user's."""
    for path in (ROOT / ".streamlit" / "secrets.toml", Path.home() / ".streamlit/secrets.toml"):
        if path.is_file():
            return tomllib.loads(path.read_text(encoding="utf-8"))
    return {}


def check_auth(s: Hosted) -> str | None:
    """What is missing for the chosen login, or None when it is ready."""
    found = secrets()
    if s.auth == "password" and not (found.get(PASSWORD_SECRET) or os.environ.get(PASSWORD_SECRET)):
        return f"auth = 'password' needs {PASSWORD_SECRET} in .streamlit/secrets.toml or the environment"
    if s.auth == "oidc":
        auth = found.get("auth")
        missing = [
            k
            for k in ("redirect_uri", "cookie_secret")
            if not isinstance(auth, dict) or k not in auth
        ]
        if missing:
            return (
                "auth = 'oidc' needs an [auth] section in .streamlit/secrets.toml (st.login) "
                f"with {' and '.join(missing)}"
            )
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("settings", type=Path, help="hosted settings TOML (see settings.example.toml)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--address", help="default 0.0.0.0, or 127.0.0.1 behind a proxy (auth=proxy)")
    p.add_argument("--print", action="store_true", help="print the command instead of running it")
    args = p.parse_args(argv)
    try:
        s = read_settings(args.settings)
    except SAEError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    problem = check_auth(s)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    address = args.address or ("127.0.0.1" if s.auth == "proxy" else "0.0.0.0")
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py")]
    cmd += streamlit_options(s, address, args.port)
    if args.print:
        print(" ".join(cmd))
        return 0
    os.environ[ENV_SETTINGS] = str(args.settings.resolve())
    os.environ[settings.HEAVY_PAIRS.name] = str(s.heavy_pairs)
    os.environ[settings.MAX_ARRAY_BYTES.name] = str(s.max_array_mb * 2**20)
    os.chdir(ROOT)
    os.execv(sys.executable, cmd)  # replaces this process: signals reach Streamlit directly


if __name__ == "__main__":
    sys.exit(main())
