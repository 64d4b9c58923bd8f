"""The application builder that the Serve config names (`import_path: serve.api.app:build_app`)."""
from dataclasses import asdict
from typing import Any

from ray import serve

from serve.api.ingress import ChatIngress
from serve.api.model import ChandlerModel
from serve.settings import Settings, load


def compose(settings: Settings, deployments: dict[str, dict[str, Any]] | None = None) -> serve.Application:
    """The application graph; `deployments` are per-deployment options as in the Serve config."""
    deployments = deployments or {}
    model_settings = {k: v for k, v in asdict(settings).items() if k not in ("redis_url", "api_key")}
    model = ChandlerModel.options(**deployments.get("ChandlerModel", {})).bind(model_settings)
    return ChatIngress.options(**deployments.get("ChatIngress", {})).bind(model, model_settings)


def build_app(args: dict[str, Any]) -> serve.Application:
    """The Serve config's `import_path` (an application builder): `args` are settings defaults,
    CHANDLER_* environment variables override them (see serve/settings.py)."""
    return compose(load(args))
