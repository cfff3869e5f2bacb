"""``kdlab dashboard``: serve the interactive planner on this machine.

Imports neither torch nor Lightning (a fit of the run database, when the page asks for
one, runs ``kdlab fit`` in a child process), so it starts in about a second.
"""

from __future__ import annotations

import argparse


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``dashboard`` on the ``kdlab`` command."""
    p = subparsers.add_parser(
        "dashboard",
        help="interactive planner in the browser: budget in, strategy out",
        description="Serve a local web page on which a budget (FLOPs, GPU-hours or money), "
        "a teacher (to train, or existing) and the number of students it serves give the "
        "compute-optimal plan in every scenario, curves against the budget, and the "
        "verdict's robustness over the fit's bootstrap resamples. Works offline.",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (whoever reaches it can read fit JSONs by path and "
        "start fits: keep the default unless the network is yours)",
    )
    p.add_argument(
        "--port", type=int, default=8050, help="port to listen on (0: a free one, printed)"
    )
    p.add_argument("--db", help="run database URL: preselects a fit of its runs, and its MFU")
    p.add_argument("--fit", help="distillation fit JSON to preselect")
    p.add_argument("--quiet", action="store_true", help="do not log each request")
    p.set_defaults(func=run_dashboard)


def run_dashboard(args: argparse.Namespace) -> int:
    from kdlab.dashboard.server import Dashboard, make_server
    from kdlab.errors import ConfigError

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, not {args.port}.")
    dashboard = Dashboard(db=args.db, fit=args.fit, quiet=args.quiet)
    try:
        server = make_server(dashboard, args.host, args.port)
    except OSError as exc:
        dashboard.close()
        raise ConfigError(f"Cannot listen on {args.host}:{args.port}: {exc.strerror}.") from None
    host, port = server.server_address[:2]
    print(f"kdlab dashboard: http://{host}:{port}/  (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        dashboard.close()
    return 0
