"""The `umbra` command.

    umbra serve <service>        run one service in the foreground (until SIGTERM); what it writes is 0600
    umbra job anonymize [--request FILE ...]   one index of a Kubernetes Indexed Job (no server; docs/deployment.md)
    umbra up [service ...]       start services as background processes on this machine
    umbra down [service ...]     stop them (SIGTERM, then SIGKILL after the grace period)
    umbra status [service ...]   health of each service
    umbra operations list|get|wait|cancel   long-running operations on the coordinator
    umbra tenants create|list               tenants (admin key: UMBRA_ADMIN_KEY or $UMBRA_HOME/secrets/admin-key)
    umbra datasets upload|list|show|export|delete   datasets (tenant key: UMBRA_API_KEY)
    umbra jobs create|list|show|preview|feedback|rounds|report   protection jobs (tenant key)
    umbra ledger balance|entries            the privacy budget: spent, left, every charge (tenant key)
    umbra models publish|publications|withdraw|predict   models on the inference server (tenant key)
"""

from __future__ import annotations

import argparse
import os
import sys

from google.protobuf import json_format

from umbra.client import layout


def _serve(args) -> int:
    # Everything the service creates (SQLite databases and their WAL files, local object-store files,
    # checkpoints) is private to the user: files 0600, folders 0700.
    os.umask(0o077)
    try:
        from umbra.services.main import serve_service
    except ImportError as exc:
        print(f"umbra serve needs the server package (pip install -e . in the repository): {exc}", file=sys.stderr)
        return 2
    return serve_service(args.service)


def _job(args) -> int:
    os.umask(0o077)  # as `umbra serve`: what it writes is private to the user
    try:
        from umbra.services.anonymizer.indexed_job import main as anonymize
    except ImportError as exc:
        print(f"umbra job needs the server package (pip install -e . in the repository): {exc}", file=sys.stderr)
        return 2
    return anonymize(args.options)


def _operations(args) -> int:
    from umbra.cli.text import echo
    from umbra.client import Client, UmbraRpcError
    from umbra.client.errors import OperationFailed

    def show(op):
        print(json_format.MessageToJson(op, indent=2))

    with Client() as client:
        ops = client.operations
        try:
            if args.action == "list":
                for op in ops.list(filter=args.filter):
                    echo(f"{op.name}  {'done' if op.done else 'running'}")
            elif args.action == "get":
                show(ops.get(args.name))
            elif args.action == "wait":
                op = ops.wait(args.name, timeout=args.timeout, progress=True)
                show(op)
                if op.HasField("error"):
                    raise OperationFailed(op.name, op.error.code, op.error.message)
            else:
                ops.cancel(args.name)
                echo(f"cancel requested for {args.name}")
        except (UmbraRpcError, OperationFailed) as exc:
            echo(f"umbra operations {args.action}: {exc}", file=sys.stderr)
            return 1
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="umbra", description="Umbra: protect face datasets and the models "
                                "trained on them.", formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run one service in the foreground")
    serve.add_argument("service", choices=layout.SERVICES)
    serve.set_defaults(func=_serve)
    job = sub.add_parser("job", help="run one index of a Kubernetes Indexed Job (no server)")
    job.add_argument("kind", choices=["anonymize"], help="anonymize: a dataset version, the index's shard range")
    job.add_argument("options", nargs=argparse.REMAINDER, help="the job's own options (umbra job anonymize --help)")
    job.set_defaults(func=_job)
    for name, help_text in (("up", "start services in the background"), ("down", "stop services"),
                            ("status", "show each service's health")):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("services", nargs="*", metavar="service",
                         help=f"one or more of {', '.join(layout.SERVICES)} (default: all)")
        cmd.set_defaults(func=lambda args, name=name: _local(name, args.services))
    ops = sub.add_parser("operations", help="long-running operations on the coordinator")
    ops_sub = ops.add_subparsers(dest="action", required=True)
    lst = ops_sub.add_parser("list", help="list your operations")
    lst.add_argument("--filter", default="", help="'done = true' or 'done = false'")
    for action in ("get", "wait", "cancel"):
        cmd = ops_sub.add_parser(action, help=f"{action} an operation")
        cmd.add_argument("name", help="operations/...")
        if action == "wait":
            cmd.add_argument("--timeout", type=float, default=None, help="seconds (default: until done)")
    ops.set_defaults(func=_operations)
    from umbra.cli import jobs, models, resources

    resources.add_commands(sub)
    jobs.add_commands(sub)
    models.add_commands(sub)
    return p


def _local(command: str, services: list[str]) -> int:
    from umbra.cli import local

    unknown = [s for s in services if s not in layout.SERVICES]
    if unknown:
        print(f"umbra {command}: unknown service {', '.join(unknown)}; known: {', '.join(layout.SERVICES)}",
              file=sys.stderr)
        return 2
    return getattr(local, command)(services or list(layout.SERVICES))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
