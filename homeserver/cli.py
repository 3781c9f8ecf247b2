"""`homeserver run | generate-config | migrate | backup | restore | admin create-user`.

The reactor is chosen here, before anything imports `twisted.internet.reactor`
(STACK-NOTES: importing some libraries installs the default one as a side effect).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
from pathlib import Path
from typing import Any, NoReturn

from homeserver.config import Config, ConfigError, WorkersConfig, load_config
from homeserver.config_template import render_config


def _die(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)


def _load(path: str) -> Config:
    try:
        config = load_config(path)
        from homeserver.plugins import PluginLoadError, parse_plugin_config

        for i, entry in enumerate(config.plugins):
            parse_plugin_config(i, entry.module, entry.config, config.source)
    except ConfigError as e:
        _die(str(e))
    except PluginLoadError as e:
        _die(str(e))
    return config


def cmd_generate_config(args: argparse.Namespace) -> None:
    from homeserver.signing_key import load_or_create_signing_key

    text = render_config(
        args.server_name,
        port=args.port,
        bind=args.bind,
        data_dir=args.data_dir,
        database_url=args.database_url or "",
        public_baseurl=args.public_baseurl or "",
        open_registration=args.open_registration,
        require_email_verification=args.require_email_verification,
        federation_port=args.federation_port,
        tls_certificate=args.tls_cert,
        tls_private_key=args.tls_key,
        federation_ca=args.federation_ca,
    )
    if args.federation_port is not None and not (args.tls_cert and args.tls_key):
        _die("--federation-port needs --tls-cert and --tls-key (the federation listener speaks TLS only)")
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    load_or_create_signing_key(data_dir / "signing.key")
    sys.stdout.write(text)


def _run_async(fn: Any) -> None:
    """Run `await fn(reactor)` on the reactor and exit with its outcome."""
    from twisted.internet import defer, task

    def main(reactor: Any) -> Any:
        return defer.Deferred.fromCoroutine(fn(reactor))

    task.react(main)


def cmd_migrate(args: argparse.Namespace) -> None:
    config = _load(args.config)
    from homeserver.logs import setup_logging

    setup_logging(config.logging.level)

    async def migrate_db(reactor: Any) -> None:
        from homeserver.plugins import migrate_plugin_schemas
        from homeserver.storage import Storage
        from homeserver.storage.migrations import migrate

        config.data_path.mkdir(parents=True, exist_ok=True)
        storage = Storage.from_url(config.database.url, 1, 1)
        try:
            applied = len(await migrate(storage.db))
            for versions in (await migrate_plugin_schemas(storage.db, config)).values():
                applied += len(versions)
            print(f"schema up to date ({applied} file(s) applied)")
        finally:
            storage.close()

    _run_async(migrate_db)


def cmd_create_user(args: argparse.Namespace) -> None:
    config = _load(args.config)

    async def create(reactor: Any) -> None:
        from homeserver.core.accounts import check_email
        from homeserver.errors import MatrixError
        from homeserver.server import HomeServer

        config.data_path.mkdir(parents=True, exist_ok=True)
        # A one-process view of a workers config: an account is rows in the shared database,
        # written like any process would; no events, nothing to forward.
        hs = HomeServer(dataclasses.replace(config, workers=WorkersConfig()), reactor)
        try:
            await hs.start()
            email = check_email(args.email)
            localpart = args.username or await hs.accounts.localpart_for_email(email)
            user_id = await hs.accounts.register(
                localpart.lower(), args.password, email=email, email_validated=True, is_admin=args.admin
            )
            print(user_id)
        except MatrixError as e:
            print(f"error: {e.errcode}: {e.message}", file=sys.stderr)
            raise SystemExit(1) from None
        finally:
            hs.storage.close()

    _run_async(create)


def _backup_s3(args: argparse.Namespace) -> Any:
    """Endpoint and credentials of an s3:// target: flags, then the environment, then boto3's
    own chain (AWS_ACCESS_KEY_ID, ~/.aws)."""
    import os

    from homeserver.backup import S3Location

    env = os.environ.get
    return S3Location(
        "",
        endpoint_url=args.s3_endpoint_url or env("HOMESERVER_BACKUP_S3_ENDPOINT_URL"),
        region=args.s3_region or env("HOMESERVER_BACKUP_S3_REGION") or "us-east-1",
        access_key_id=env("HOMESERVER_BACKUP_S3_ACCESS_KEY_ID"),
        secret_access_key=env("HOMESERVER_BACKUP_S3_SECRET_ACCESS_KEY"),
    )


def cmd_backup(args: argparse.Namespace) -> None:
    import time

    from homeserver.backup import BackupError, create_backup, prune_backups
    from homeserver.plugins import PluginLoadError

    config = _load(args.config)
    if args.keep is not None and args.keep < 1:
        _die("--keep must be at least 1")
    try:
        name = create_backup(config, args.to, int(time.time() * 1000), _backup_s3(args))
        print(f"backup {name} written to {args.to}")
        if args.keep is not None:
            for old in prune_backups(args.to, args.keep, _backup_s3(args)):
                print(f"deleted {old}")
    except (BackupError, PluginLoadError, OSError) as e:
        _die(f"backup failed: {e}")


def cmd_restore(args: argparse.Namespace) -> None:
    from homeserver.backup import BackupError, restore_backup
    from homeserver.plugins import PluginLoadError

    config = _load(args.config)
    try:
        manifest = restore_backup(config, args.source, force=args.force, s3_options=_backup_s3(args))
    except (BackupError, PluginLoadError, OSError) as e:
        _die(f"restore failed: {e}")
    tables = manifest["database"]["tables"]
    print(
        f"restored {manifest['name']} of {manifest['server_name']}: {tables.get('users', 0)} account(s),"
        f" {tables.get('events', 0)} event(s), {len(manifest['files'])} file(s) checked"
    )


def _disk_full_message(config: Config, error: BaseException) -> str:
    from homeserver.disk_full import causes

    cause = causes(error)[-1]
    return (
        f"disk full at {config.data_path} ({cause}): free some space there and start again; "
        "nothing was changed"
    )


def _client_listener(config: Config, instance: str) -> tuple[str, int]:
    """Where this instance serves clients: its `workers.instances.NAME.listen`, else `listen`."""
    from homeserver.config import split_host_port

    worker = config.workers.instances.get(instance)
    if worker is not None and worker.listen:
        return split_host_port(worker.listen)
    return config.listen.bind, config.listen.port


def cmd_run(args: argparse.Namespace) -> None:
    # No collector passes while start-up builds what lives as long as the process (they cost
    # ~25 ms of CPU); gc_tuning.tune_after_startup turns it back on.
    gc.disable()
    from homeserver import lazy_imports

    lazy_imports.defer()  # before the reactor's import pulls in TLS support
    from homeserver.reactor import install

    install()
    config = _load(args.config)
    from twisted.internet import reactor as _reactor
    from twisted.internet.defer import Deferred
    from twisted.logger import Logger

    from homeserver import gc_tuning
    from homeserver.api.connection_cap import raise_open_files_limit
    from homeserver.disk_full import is_disk_full
    from homeserver.logs import setup_logging
    from homeserver.server import HomeServer

    reactor: Any = _reactor
    setup_logging(config.logging.level)
    log = Logger(namespace="homeserver")
    # Each connection is a file descriptor: the soft limit first, then the caps from it.
    raise_open_files_limit()
    try:
        config.data_path.mkdir(parents=True, exist_ok=True)
        # Reads or makes the signing key and jwt.secret.
        hs = HomeServer(config, reactor, worker=args.worker)
    except ConfigError as e:
        _die(str(e))
    except OSError as e:
        if is_disk_full(e, str(config.data_path)):
            _die(_disk_full_message(config, e))
        raise
    state: dict[str, Any] = {"port": None, "exit": 0}
    bind, port = _client_listener(config, hs.topology.me)

    async def startup() -> None:
        try:
            await hs.start()
            # Twisted's default accept backlog (50) overflows under bursts of new connections
            # (the kernel drops or resets them); the kernel caps this at net.core.somaxconn.
            state["port"] = reactor.listenTCP(port, hs.site(), backlog=1024, interface=bind)
            if hs.topology.multi:
                internal_bind, internal_port = hs.topology.internal_address(hs.topology.me)
                hs.internal_port = reactor.listenTCP(
                    internal_port, hs.internal_site(), backlog=1024, interface=internal_bind
                )
                log.info(
                    "worker {name}: internal requests on http://{bind}:{port}",
                    name=hs.topology.me,
                    bind=internal_bind,
                    port=internal_port,
                )
            federation = hs.federation_site()
            if federation is not None:
                hs.federation_port = federation_port = reactor.listenSSL(
                    config.federation.port,
                    federation[0],
                    federation[1],
                    backlog=1024,
                    interface=config.federation.bind_address,
                )
                log.info(
                    "federation on https://{bind}:{port}",
                    bind=config.federation.bind_address,
                    port=federation_port.getHost().port,  # type: ignore[attr-defined]
                )
            metrics_site = hs.metrics_site()
            if metrics_site is not None:
                hs.metrics_port = reactor.listenTCP(
                    config.metrics.port, metrics_site, interface=config.metrics.bind_address
                )
                log.info(
                    "metrics on http://{bind}:{port}/metrics",
                    bind=config.metrics.bind_address,
                    port=config.metrics.port,
                )
        except Exception as e:
            reason = _disk_full_message(config, e) if is_disk_full(e, str(config.data_path)) else str(e)
            log.critical("start-up failed: {error}", error=reason)
            state["exit"] = 1
            hs.storage.close()
            reactor.stop()
            return
        log.info(
            "listening on http://{bind}:{port} as {server_name}",
            bind=bind,
            port=state["port"].getHost().port,
            server_name=config.server_name,
        )
        cap = hs.connection_cap
        log.info(
            "connections: at most {total} open, {per_ip} from one address",
            total=cap.total,
            per_ip=cap.per_address,
        )
        reactor.addSystemEventTrigger(
            "before", "shutdown", lambda: Deferred.fromCoroutine(hs.stop(state["port"]))
        )
        # Start-up is done: what it built lives as long as the process.
        gc_tuning.tune_after_startup(hs.clock)

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(startup()))
    # reactor.run() turns SIGTERM and SIGINT into reactor.stop(), which runs the
    # "before shutdown" trigger above: stop listening, drain requests, close the DB.
    reactor.run()
    raise SystemExit(state["exit"] or hs.exit_code)


def cmd_deploy_check(args: argparse.Namespace) -> None:
    """Exit 1, naming each mismatch and printing the lines to use, unless `--haproxy` routes
    every room's writes to the room's event writer."""
    from homeserver.workers import haproxy_check

    writers = _load(args.config).workers.event_writers
    if not writers:
        raise SystemExit(f"{args.config}: no workers.event_writers: nothing to route")
    try:
        with open(args.haproxy, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        _die(f"{args.haproxy}: cannot be read ({e})")
    problems = haproxy_check.check(text, writers)
    if not problems:
        print(f"{args.haproxy}: room writes routed to {', '.join(writers)}, as {args.config} says")
        return
    for problem in problems:
        print(f"{args.haproxy}: {problem}", file=sys.stderr)
    print("The lines to use (frontend, then the backend of the writers):", file=sys.stderr)
    for line in haproxy_check.routes(writers):
        print(f"    {line}", file=sys.stderr)
    raise SystemExit(1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="homeserver", description="A Matrix homeserver.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser(
        "generate-config", help="print a complete, commented config and create the signing key"
    )
    gen.add_argument("--server-name", required=True)
    gen.add_argument("--port", type=int, default=8008)
    gen.add_argument("--bind", default="127.0.0.1")
    gen.add_argument("--data-dir", default="./data")
    gen.add_argument("--database-url", default=None)
    gen.add_argument("--public-baseurl", default=None)
    gen.add_argument("--open-registration", action="store_true")
    gen.add_argument("--require-email-verification", action="store_true")
    gen.add_argument("--federation-port", type=int, default=None, help="the TLS federation listener's port")
    gen.add_argument("--tls-cert", default=None, help="its certificate (PEM, with the chain)")
    gen.add_argument("--tls-key", default=None, help="its private key (PEM)")
    gen.add_argument("--federation-ca", default=None, help="extra CAs (PEM) trusted for outbound federation")
    gen.set_defaults(func=cmd_generate_config)

    run = sub.add_parser("run", help="serve HTTP and WebSocket")
    run.add_argument("-c", "--config", required=True)
    run.add_argument(
        "--worker", default=None, help="which of workers.instances this process is (several processes)"
    )
    run.set_defaults(func=cmd_run)

    check = sub.add_parser(
        "deploy-check", help="check that a balancer's room routing matches workers.event_writers"
    )
    check.add_argument("-c", "--config", required=True)
    check.add_argument("--haproxy", required=True, help="the HAProxy config file to check")
    check.set_defaults(func=cmd_deploy_check)

    mig = sub.add_parser("migrate", help="apply pending schema files")
    mig.add_argument("-c", "--config", required=True)
    mig.set_defaults(func=cmd_migrate)

    def s3_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--s3-endpoint-url", default=None, help="S3 endpoint (default: AWS)")
        p.add_argument("--s3-region", default=None)

    backup = sub.add_parser("backup", help="take a consistent backup set while the server runs")
    backup.add_argument("-c", "--config", required=True)
    backup.add_argument("--to", required=True, help="a directory or s3://BUCKET[/PREFIX]")
    backup.add_argument("--keep", type=int, default=None, help="then delete all but the newest N sets")
    s3_flags(backup)
    backup.set_defaults(func=cmd_backup)

    restore = sub.add_parser("restore", help="restore a backup set into a fresh data dir and database")
    restore.add_argument("-c", "--config", required=True)
    restore.add_argument(
        "--from", dest="source", required=True, help="a set, or a directory or s3:// prefix (its newest set)"
    )
    restore.add_argument("--force", action="store_true", help="restore over a target that holds data")
    s3_flags(restore)
    restore.set_defaults(func=cmd_restore)

    admin = sub.add_parser("admin", help="administration")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    create = admin_sub.add_parser("create-user", help="create an account")
    create.add_argument("-c", "--config", required=True)
    create.add_argument("--email", required=True)
    create.add_argument("--password", required=True)
    create.add_argument("--username", default=None, help="localpart (default: from the email address)")
    create.add_argument("--admin", action="store_true")
    create.set_defaults(func=cmd_create_user)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)
