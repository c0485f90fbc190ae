"""`umbra tenants …`, `umbra datasets …` and `umbra ledger …`: the coordinator's resources from the command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from google.protobuf import json_format

from umbra.cli.text import echo
from umbra.client import layout
from umbra.client.channel import open_channel
from umbra.client.errors import OperationFailed, UmbraRpcError
from umbra.client.operations import call
from umbra.client.settings import ClientSettings
from umbra.common.v1 import privacy_pb2
from umbra.coordinator.v1 import dataset_service_pb2 as ds
from umbra.coordinator.v1 import ledger_service_pb2 as ls
from umbra.coordinator.v1 import ledger_service_pb2_grpc
from umbra.coordinator.v1 import tenant_service_pb2 as ts
from umbra.coordinator.v1 import tenant_service_pb2_grpc


def _admin_key() -> str:
    key = os.environ.get("UMBRA_ADMIN_KEY", "")
    path = layout.home() / "secrets" / "admin-key"
    if not key and path.exists():
        key = path.read_text().strip()
    if not key:
        raise SystemExit(f"umbra tenants: needs the admin key in UMBRA_ADMIN_KEY or {path}")
    return key


def _show(message) -> None:
    print(json_format.MessageToJson(message, indent=2))


def tenants(args) -> int:
    settings = ClientSettings.load()
    stub = tenant_service_pb2_grpc.TenantServiceStub(open_channel(settings.endpoint, _admin_key()))
    try:
        _tenants(stub, args)
    except UmbraRpcError as exc:
        echo(f"umbra tenants {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0


def _tenants(stub, args) -> None:
    if args.action == "create":
        tenant = ts.Tenant(display_name=args.display_name or args.tenant_id)
        if args.epsilon is not None:
            tenant.privacy_budget.epsilon, tenant.privacy_budget.delta = args.epsilon, args.delta
        created = call(stub.CreateTenant, ts.CreateTenantRequest(tenant_id=args.tenant_id, tenant=tenant), timeout=30)
        echo(f"tenant {created.tenant.name} created (bucket {created.tenant.bucket}, budget "
             f"ε={created.tenant.privacy_budget.epsilon:g}, δ={created.tenant.privacy_budget.delta:g})")
        if args.key_file:
            path = Path(args.key_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(created.api_key_secret + "\n")
            echo(f"its API key (shown once) is in {path}: export UMBRA_API_KEY=$(cat {path})")
        else:
            echo(f"its API key, shown once: export UMBRA_API_KEY={created.api_key_secret}")
    else:
        token = ""
        while True:
            page = call(stub.ListTenants, ts.ListTenantsRequest(page_token=token), timeout=30)
            for tenant in page.tenants:
                echo(f"{tenant.name:30} {tenant.display_name}")
            token = page.next_page_token
            if not token:
                break


def datasets(args) -> int:
    from umbra.client.datasets import DatasetsClient, IngestRejected
    from umbra.dataset.images import SizePolicy

    settings = ClientSettings.load()
    if not settings.api_key:
        raise SystemExit("umbra datasets: needs a tenant API key in UMBRA_API_KEY (or the config file)")
    client = DatasetsClient(open_channel(settings.endpoint, settings.api_key))
    try:
        if args.action == "upload":
            version = client.upload(Path(args.folder), args.dataset, layout=args.layout, seed=args.seed,
                                    policy=SizePolicy(size=args.image_size, mode=args.size_policy),
                                    drop_invalid=args.drop_invalid, shard_bytes=int(args.shard_mb * 1024 * 1024))
            echo(f"{version.name} committed: {version.sample_count} images in {version.shard_count} shards, "
                 f"splits {dict(version.split_counts)}")
        elif args.action == "list":
            token = ""
            while True:
                page = call(client.stub.ListDatasets, ds.ListDatasetsRequest(page_token=token), timeout=30)
                for d in page.datasets:
                    echo(f"{d.name:40} latest v{d.latest_version}  {d.display_name}")
                token = page.next_page_token
                if not token:
                    break
        elif args.action == "show":
            if args.version:
                _show(call(client.stub.GetDatasetVersion, ds.GetDatasetVersionRequest(
                    name=f"datasets/{args.dataset}/versions/{args.version}"), timeout=30).dataset_version)
            else:
                _show(call(client.stub.GetDataset, ds.GetDatasetRequest(name=f"datasets/{args.dataset}"),
                           timeout=30).dataset)
        elif args.action == "export":
            count = client.export(f"datasets/{args.dataset}/versions/{args.version}", Path(args.folder))
            echo(f"exported {count} images to {args.folder}")
        else:
            call(client.stub.DeleteDataset, ds.DeleteDatasetRequest(name=f"datasets/{args.dataset}"), timeout=60)
            echo(f"datasets/{args.dataset} deleted")
    except IngestRejected as exc:
        for line in str(exc).splitlines():  # one problem a line, each escaped
            echo(line, file=sys.stderr)
        return 1
    except (UmbraRpcError, OperationFailed) as exc:
        echo(f"umbra datasets {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0


def ledger(args) -> int:
    settings = ClientSettings.load()
    if not settings.api_key:
        raise SystemExit("umbra ledger: needs a tenant API key in UMBRA_API_KEY (or the config file)")
    stub = ledger_service_pb2_grpc.LedgerServiceStub(open_channel(settings.endpoint, settings.api_key))
    dataset = f"datasets/{args.dataset}" if args.dataset else ""
    try:
        if args.action == "balance":
            b = call(stub.GetPrivacyBalance, ls.GetPrivacyBalanceRequest(dataset=dataset), timeout=60)
            scope = dataset or "all datasets"
            echo(f"budget    ε={b.budget.epsilon:.6g}  δ={b.budget.delta:.3g}  (the tenant's, for all datasets)")
            echo(f"spent     ε={b.spent.epsilon:.6g}  δ={b.spent.delta:.3g}  on {scope} (tight composition)")
            echo(f"          ε={b.spent_basic.epsilon:.6g}  δ={b.spent_basic.delta:.3g}  (basic composition)")
            echo(f"left      ε={b.remaining.epsilon:.6g}  δ={b.remaining.delta:.3g}")
            echo(f"entries   {b.committed_entries} committed, {b.reserved_entries} reserved (work in progress)")
        else:
            token, states = "", privacy_pb2.PrivacyChargeState
            while True:
                page = call(stub.ListLedgerEntries, ls.ListLedgerEntriesRequest(dataset=dataset, page_token=token),
                            timeout=60)
                for e in page.entries:
                    state = states.Name(e.state).removeprefix("PRIVACY_CHARGE_STATE_").lower()
                    echo(f"{e.create_time.ToDatetime():%Y-%m-%d %H:%M:%S}  {state:9}  ε={e.cost.epsilon:<10.6g} "
                         f"δ={e.cost.delta:<8.3g} {e.dataset:24} {e.spent_by}: {e.cost.description}")
                token = page.next_page_token
                if not token:
                    break
    except UmbraRpcError as exc:
        echo(f"umbra ledger {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("tenants", help="create and list tenants (admin key)")
    t_sub = t.add_subparsers(dest="action", required=True)
    create = t_sub.add_parser("create", help="create a tenant and print its first API key")
    create.add_argument("tenant_id", help="3-40 lower-case letters, digits and '-'")
    create.add_argument("--display-name", default="")
    create.add_argument("--epsilon", type=float, default=None, help="privacy budget ε (default 10)")
    create.add_argument("--delta", type=float, default=1e-5, help="privacy budget δ (default 1e-5)")
    create.add_argument("--key-file", help="write the API key here (mode 0600) instead of printing it")
    t_sub.add_parser("list", help="list tenants")
    t.set_defaults(func=tenants)

    d = sub.add_parser("datasets", help="upload, list, show, export and delete datasets (tenant API key)")
    d_sub = d.add_subparsers(dest="action", required=True)
    up = d_sub.add_parser("upload", help="validate a folder and upload it as a new dataset version")
    up.add_argument("folder")
    up.add_argument("--dataset", required=True, help="dataset id (created when new)")
    up.add_argument("--layout", default="auto", choices=["auto", "csv", "imagefolder", "celeba", "utkface"])
    up.add_argument("--image-size", type=int, default=64)
    up.add_argument("--size-policy", default="resize", choices=["resize", "require"])
    up.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split")
    up.add_argument("--drop-invalid", action="store_true", help="commit without the images that fail checks")
    up.add_argument("--shard-mb", type=float, default=64.0, help="shard size in MiB")
    d_sub.add_parser("list", help="list datasets")
    show = d_sub.add_parser("show", help="show a dataset or one of its versions")
    show.add_argument("dataset")
    show.add_argument("--version", type=int, default=0)
    export = d_sub.add_parser("export", help="write a version to a folder (images/ and labels.csv)")
    export.add_argument("dataset")
    export.add_argument("folder")
    export.add_argument("--version", type=int, required=True)
    delete = d_sub.add_parser("delete", help="delete a dataset and all its versions")
    delete.add_argument("dataset")
    d.set_defaults(func=datasets)

    g = sub.add_parser("ledger", help="the privacy budget: what is spent and left, and every charge (tenant API key)")
    g_sub = g.add_subparsers(dest="action", required=True)
    for action, text in (("balance", "the budget, what is spent (tight and basic composition) and what is left"),
                         ("entries", "every charge, newest first: reserved, committed or released")):
        cmd = g_sub.add_parser(action, help=text)
        cmd.add_argument("--dataset", default="", help="only the charges against this dataset id")
    g.set_defaults(func=ledger)
