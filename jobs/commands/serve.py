"""`maskdex serve`: the query service on a local Ray (or a cluster), until Ctrl-C."""

from __future__ import annotations

import sys

from maskdex.jobs.arguments import positive_int


def add_parser(commands) -> None:
    serve = commands.add_parser(
        "serve", help="serve search, segmentation and support sets over HTTP (Ray Serve)",
        description="Serve search, segmentation and support sets over HTTP until Ctrl-C. Exit 2 when the config "
                    "cannot work (checked before Ray starts: every missing weight file, the database); exit 1 when "
                    "a deployment fails to start anyway, with the exception its replicas raised.")
    serve.add_argument("--db", default=None, help="LanceDB directory or object-store URI (else the config's)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=positive_int, default=8000, help="port (default 8000)")
    serve.add_argument("--config", default=None,
                       help="service config YAML: a maskdex section (db, preset, limits, token) and deployments")
    serve.add_argument("--address", default=None, help="Ray cluster to join (default: start Ray locally)")
    serve.set_defaults(run=run_serve)


def run_serve(args) -> int:
    """0 after Ctrl-C; 2 for a config that cannot work (checked before Ray starts: every missing weight
    file, the database); 1 when a deployment fails to start anyway, with its replicas' exception."""
    from maskdex.jobs.serve.app import ServiceStartError, serve_forever
    from maskdex.jobs.serve.config import load_config

    config = load_config(args.config, db=args.db)
    try:
        serve_forever(config, host=args.host, port=args.port, address=args.address)
    except ServiceStartError as error:
        print(f"maskdex serve: error: the service did not start:\n{error}", file=sys.stderr)
        return 1
    return 0
