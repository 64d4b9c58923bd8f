"""The application builder that the Serve config names (`import_path: serve.api.app:build_app`).

Serve validates the config's `args` into `AppArgs` before calling the builder (a typed builder,
as in Ray's docs), so `serve run`/`serve deploy` refuse a misspelt or malformed setting."""
from typing import Any

from ray import serve

from serve.api.ingress import ChatIngress
from serve.api.model import ChandlerModel
from serve.settings import AppArgs, Settings, load


def compose(settings: Settings, deployments: dict[str, dict[str, Any]] | None = None) -> serve.Application:
    """The application graph; `deployments` are per-deployment options as in the Serve config.
    Secrets stay out of it: the ingress reads them from its own environment."""
    deployments = deployments or {}
    args = settings.args()
    model = ChandlerModel.options(**deployments.get("ChandlerModel", {})).bind(args)
    return ChatIngress.options(**deployments.get("ChatIngress", {})).bind(model, args)


def build_app(args: AppArgs) -> serve.Application:
    """`args` are settings defaults; CHANDLER_* environment variables override them (serve/settings.py)."""
    return compose(load(args))
