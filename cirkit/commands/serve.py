"""`cirkit serve`: keep models loaded and answer `cirkit query` from other shells, warm."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cirkit.commands.common import ModelOverrides


def serve(
    pipeline: Annotated[
        Optional[list[str]],
        typer.Option("--pipeline", "-p", help="Pipeline whose models to load at start (repeat for several; default: cirevl). Others load on first use and stay."),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[
        Optional[int], typer.Option("--port", min=0, max=65535, help="Port (default: $CIRKIT_PORT, else 8477; 0 picks a free one).")
    ] = None,
    model: ModelOverrides = None,
) -> None:
    """Keep models loaded and answer queries: `cirkit query` uses a running server (warm, seconds) unless --local.

    Only your own `cirkit query` can use it: it answers requests that carry the token it writes to a
    file only you can read, and refuses web pages and other host names.
    """
    from cirkit.commands.common import parse_model_overrides
    from cirkit.pipelines import DEFAULT_PIPELINE
    from cirkit.serve.server import QueryServer

    overrides = parse_model_overrides(model)  # the preloaded models; a query names its own with --model
    QueryServer(host, port).serve(pipeline or [DEFAULT_PIPELINE], overrides)
