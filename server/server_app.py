"""ServerApp: prepare the catalog, run the federated rounds, write the run directory."""

from __future__ import annotations

from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.federation import run_federated
from shared.config import resolve


def build_server_app(overrides: dict[str, Any] | None = None) -> ServerApp:
    """A ServerApp whose config is the run config plus ``overrides`` (for in-process runs)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        config = resolve(dict(context.run_config), overrides)
        run_federated(grid, config)

    return app


app = build_server_app()
