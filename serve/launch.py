"""Running the backend on this machine: `python -m serve up` (the Ray Serve app) and
`python -m serve run` (plus the Discord bot when DISCORD_TOKEN is set)."""
import logging
import os
import time
from pathlib import Path
from typing import Any

from serve.settings import load

CONFIG = Path(__file__).resolve().parent / "config.yaml"


def application_config(config: Path | str = CONFIG, name: str = "chandler") -> dict[str, Any]:
    import yaml

    apps = yaml.safe_load(Path(config).read_text())["applications"]
    return next(app for app in apps if app["name"] == name)


def start(host: str, port: int, config: Path | str = CONFIG, overrides: dict[str, Any] | None = None,
          deployment_overrides: dict[str, dict[str, Any]] | None = None) -> str:
    """Deploy the application described in the Serve config on the Ray instance this process is
    connected to (with `overrides` of its args and `deployment_overrides` of its deployments'
    options), serving HTTP on host:port; returns the page's URL. Blocks until the model is loaded."""
    from ray import serve

    from serve.api.app import compose

    app = application_config(config)
    args = {**app.get("args", {}), **(overrides or {})}
    deployments = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in app.get("deployments", [])}
    for name, options in (deployment_overrides or {}).items():
        deployments[name] = {**deployments.get(name, {}), **options}
    serve.start(http_options={"host": host, "port": port})
    serve.run(compose(load(args), deployments), name=app["name"], route_prefix=app.get("route_prefix", "/"))
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{shown}:{port}/"


def launch(args, with_bot: bool) -> int:
    """`python -m serve up` (with_bot False) and `python -m serve run` (the Discord bot too when
    DISCORD_TOKEN is set). Blocks until Ctrl-C or SIGTERM, then stops everything."""
    import signal
    import subprocess
    import sys

    from serve.character.policy import check_files
    from serve.character.selector import SelectorError
    from serve.settings import SettingsError

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cpus = args.num_cpus or max(2, os.cpu_count() or 1)
    overrides: dict[str, Any] = {}
    try:
        settings = load(application_config(args.config).get("args", {}))
        if settings.torch_threads == 0:
            overrides["torch_threads"] = max(1, os.cpu_count() or 1)  # one replica: let it use the machine
    except (OSError, KeyError, StopIteration, SettingsError) as error:
        print(f"error: {args.config}: {error}", file=sys.stderr)
        return 2
    try:
        check_files(settings.reply_mode)  # quote and blend need the selector and its line index
    except SelectorError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import ray

    def interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)  # also when started with SIGINT ignored (a background job)
    signal.signal(signal.SIGTERM, interrupt)
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
    bot = None
    try:
        try:
            url = start(args.host, args.port, args.config, overrides)
        except Exception as error:  # model that cannot load, port in use: one line, not a traceback
            print(f"error: the backend did not start: {str(error).strip().splitlines()[-1][:300]}", file=sys.stderr)
            return 1
        print(f"\nChandler is up: {url}  (web chat; API: POST {url}v1/chat, {url}v1/chat/completions)", flush=True)
        if with_bot and os.environ.get("DISCORD_TOKEN"):
            env = {**os.environ, "CHANDLER_API_URL": os.environ.get("CHANDLER_API_URL") or url.rstrip("/")}
            bot = subprocess.Popen([sys.executable, "-m", "discord_bot"], env=env)
            print(f"Discord bot started (pid {bot.pid})", flush=True)
        elif with_bot:
            print("DISCORD_TOKEN is not set: the Discord bot is not started.", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        while True:
            time.sleep(0.5)
            if bot is not None and bot.poll() is not None:
                print(f"the Discord bot exited (status {bot.returncode}); the backend keeps running", flush=True)
                bot = None
    except KeyboardInterrupt:
        pass
    finally:
        from ray import serve

        print("stopping…", flush=True)
        if bot is not None and bot.poll() is None:
            bot.terminate()
            try:
                bot.wait(10)
            except subprocess.TimeoutExpired:
                bot.kill()
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    return 0


def add_launch_arguments(parser) -> None:
    parser.add_argument("--host", default=os.environ.get("CHANDLER_HOST", "127.0.0.1"), help="address to serve HTTP on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("CHANDLER_PORT", "8000")), help="(default: %(default)s)")
    parser.add_argument("--config", default=str(CONFIG), help="Ray Serve config file (default: serve/config.yaml)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs Ray may use (default: all, at least 2)")


def up(args) -> int:
    """Start the backend alone and block."""
    return launch(args, with_bot=False)


def run(args) -> int:
    """The backend, plus the Discord bot when DISCORD_TOKEN is set (what `make run` calls)."""
    return launch(args, with_bot=True)
