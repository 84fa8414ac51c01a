"""Entry points: ``ganglion`` (run), ``check-config``, ``login``, ``service``, ``status``...;
flags in, then hand over."""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from ganglion import __version__
from ganglion.config import LoadedConfig, load_config, masked_dump, secret_values
from ganglion.errors import ConfigError, StartupError
from ganglion.interfaces.matrix.login import add_arguments, run_login
from ganglion.logs import SecretMask, setup_logging
from ganglion.notify import notify
from ganglion.service import add_arguments as add_service_arguments
from ganglion.service import run_service
from ganglion.storage.files import WEB_TOKEN

if TYPE_CHECKING:
    from ganglion.app import App
    from ganglion.interfaces.web import WebInterface

log = logging.getLogger("ganglion")

EXIT_CONFIG = 2
EXIT_STUCK = 1
"""Stopped on a signal, but a part did not stop within app.STOP_SECONDS (it is logged)."""
EXIT_AT_ONCE = 130
"""A second SIGINT or SIGTERM while stopping: out at once, nothing more is cleaned up."""
DUPLICATE_SIGNAL_SECONDS = 1.0
"""A signal this soon after the first is the same stop, not a second one: systemd (its
default KillMode), ``kill -- -PGID`` and a terminal's Ctrl-C signal every process of the
group, and ``uv run`` forwards its own copy to the daemon, so one stop arrives twice within
milliseconds. A person's deliberate second Ctrl-C comes later."""
ALL_SIGNALS_COUNT = "STATUS=stopping; a second SIGINT or SIGTERM now exits at once"
"""Notified (see notify.py) when the duplicate window is over and the stop still runs."""


def _global_options(parser: argparse.ArgumentParser, *, after_command: bool) -> None:
    # After the command, SUPPRESS: a command given without them keeps the values given
    # before it, instead of setting its own defaults over them.
    suppress = argparse.SUPPRESS if after_command else None
    parser.add_argument("--config", metavar="PATH", default=suppress,
                        help="config file (default: $GANGLION_CONFIG, else ./config.yaml if "
                        "present)")
    parser.add_argument("--debug", action="store_true", default=suppress or False,
                        help="log at DEBUG, including raw LLM traffic (secrets stay masked)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ganglion", description="Personal AI assistant daemon.")
    p.add_argument("--version", action="version", version=f"ganglion {__version__}")
    _global_options(p, after_command=False)
    after = argparse.ArgumentParser(add_help=False)  # the same after the command too
    _global_options(after, after_command=True)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", parents=[after], help="run the daemon (the default)")
    sub.add_parser("check-config", parents=[after],
                   help="validate the config and print it with secrets masked")
    login = sub.add_parser(
        "login", parents=[after],
        help="log the Matrix bot in as a new device and write it into the config")
    add_arguments(login)
    service = sub.add_parser(
        "service", parents=[after], help="print (or install) a systemd unit that runs this daemon")
    add_service_arguments(service)
    doctor = sub.add_parser(
        "doctor", parents=[after],
        help="check the config, the model servers, Matrix, folders, database, port and clock; "
             "say what to fix")
    doctor.add_argument("--json", action="store_true", help="the checks as one JSON object")
    backup = sub.add_parser(
        "backup", parents=[after],
        help="write everything the daemon keeps into one archive (while it runs)")
    backup.add_argument("file", type=Path, help="the archive to write (.tar.gz)")
    backup.add_argument("--with-secrets", action="store_true",
                        help="keep the config's secrets and the web token in the archive")
    restore = sub.add_parser(
        "restore", parents=[after],
        help="unpack a backup into an empty data folder (the daemon stopped)")
    restore.add_argument("file", type=Path, help="the archive `ganglion backup` wrote")
    database = sub.add_parser("db", parents=[after], help="the database: copy it")
    db_copy = database.add_subparsers(dest="db_command", metavar="DB_COMMAND",
                                      required=True).add_parser(
        "copy", parents=[after], help="copy every row into an empty database (SQLite or "
                                      "PostgreSQL, either way), the daemon stopped")
    db_copy.add_argument("--from", dest="source", required=True, metavar="URL",
                         help="sqlite:///PATH (relative to the data folder) or postgresql://...")
    db_copy.add_argument("--to", dest="target", required=True, metavar="URL",
                         help="an empty database, same forms")
    status = sub.add_parser(
        "status", parents=[after],
        help="ask the running daemon how it is: queue, endpoints, Matrix, reminders, tokens")
    status.add_argument("--json", action="store_true", help="its answer as one JSON object")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "login":  # before the config is validated: it may lack the device yet
        return run_login(args)
    if args.command == "doctor":
        return _doctor(args)
    try:
        loaded = load_config(args.config)
    except ConfigError as err:
        print(err, file=sys.stderr)
        print("ganglion: fix the config and start again (see config.yaml.example)",
              file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        return _check_config(loaded)
    if args.command in ("backup", "restore"):
        return _backup_or_restore(loaded, args)
    if args.command == "db":
        from ganglion.db_copy import run_copy  # noqa: PLC0415  (the drivers: only for this)

        return run_copy(loaded, args.source, args.target)
    if args.command == "status":
        return _status(loaded, as_json=args.json)
    if args.command == "service":
        from ganglion.app import STOP_SECONDS  # noqa: PLC0415  (only for the unit)

        return run_service(loaded, args, STOP_SECONDS)
    return _run(loaded, debug=args.debug)


def _check_config(loaded: LoadedConfig) -> int:
    where = str(loaded.source) if loaded.source else "built-in defaults (no config file found)"
    print(f"# config OK: {where}")
    print(yaml.safe_dump(masked_dump(loaded.config), sort_keys=False), end="")
    for warning in _budget_warnings(loaded):
        print(f"ganglion: warning: {warning}", file=sys.stderr)
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from ganglion import doctor  # noqa: PLC0415  (aiohttp, the endpoints: only for this)

    # What the parts would log (a failed discovery) is in the checks: no stray lines.
    logging.getLogger().addHandler(logging.NullHandler())
    try:
        checks = asyncio.run(doctor.diagnose(load_config(args.config)))
    except ConfigError as err:
        checks = doctor.config_failure(str(err))
    if args.json:
        print(json.dumps(doctor.as_json(checks), indent=2))
    else:
        print(doctor.report(checks))
    return 0 if all(c.ok for c in checks) else 1


def _backup_or_restore(loaded: LoadedConfig, args: argparse.Namespace) -> int:
    from ganglion.backups import BackupError, backup, restore  # noqa: PLC0415

    try:
        if args.command == "backup":
            made = backup(loaded, args.file, with_secrets=args.with_secrets)
            rows = sum(made["rows"].values())
            print(f"backed up {made['files']} files ({rows:,} database rows) to {args.file} "
                  f"in {made['seconds']:.1f} s"
                  + ("" if args.with_secrets else "; secrets left out (--with-secrets keeps "
                     "them)"))
        else:
            done = restore(loaded, args.file)
            print(f"restored {args.file} into {loaded.data_dir}"
                  + (f"; its config (for comparison) is at {done['config_copy']}"
                     if "config_copy" in done else ""))
    except BackupError as err:
        print(f"ganglion {args.command}: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"ganglion {args.command}: {err.filename or ''}: {err.strerror}", file=sys.stderr)
        return 1
    return 0


def _status(loaded: LoadedConfig, *, as_json: bool) -> int:
    from ganglion.status import NoDaemon, daemon_address, fetch, text  # noqa: PLC0415

    try:
        url, token = daemon_address(loaded.config.web, loaded.data_dir)
        status = fetch(url, token)
    except NoDaemon as err:
        print(f"ganglion status: {err}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2) if as_json else text(status))
    return 0


def _budget_warnings(loaded: LoadedConfig) -> list[str]:
    """A model whose context_tokens the fixed part of every request alone exceeds: the base
    prompt, the tool schemas, the memory files (the config is still valid: say so, exit 0)."""
    from ganglion.toolbox import fixed_prompt_tokens  # noqa: PLC0415  (only to warn)

    llm = loaded.config.llm
    fixed = fixed_prompt_tokens(loaded)
    budgets = {"llm.context_tokens": (llm.model, llm.context_tokens)}
    budgets |= {f"llm.models.{m}.context_tokens": (m, own.context_tokens)
                for m, own in llm.models.items() if own.context_tokens}
    return [f"{key} is {tokens:,} for model {model}, but the base prompt, the tool schemas "
            f"and the memory files alone take about {fixed:,} tokens: every request would "
            "overflow it. Raise it to what the model's server takes (llama.cpp: -c), switch "
            "tools off in tools.policy, or shorten data/MEMORIES.txt."
            for key, (model, tokens) in budgets.items() if fixed > tokens]


def _run(loaded: LoadedConfig, *, debug: bool) -> int:
    cfg = loaded.config
    if debug:
        cfg = cfg.model_copy(update={
            "logging": cfg.logging.model_copy(update={"level": "DEBUG", "debug_llm": True})})
        loaded = LoadedConfig(cfg, loaded.source, loaded.base_dir)
    mask = SecretMask(secret_values(cfg))
    setup_logging(loaded.log_dir, cfg.logging.level, mask, cfg.logging.format)
    try:
        return asyncio.run(_serve(loaded, mask))
    except StartupError as err:
        log.error("%s", err)
        return 1


async def _serve(loaded: LoadedConfig, mask: SecretMask) -> int:
    from ganglion.app import App  # noqa: PLC0415  (here so `check-config` stays light)

    stop = asyncio.Event()
    signals = _Signals(stop)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signals.received, sig.name)

    try:
        return await _serve_app(App(loaded, secret_mask=mask), loaded, stop)
    finally:
        _ignore_late_signals(loop)


async def _serve_app(app: App, loaded: LoadedConfig, stop: asyncio.Event) -> int:
    source = loaded.source or (
        "none (built-in defaults; create config.yaml from config.yaml.example)")
    log.info("ganglion %s starting; config: %s; data: %s", __version__, source, loaded.data_dir)
    try:
        started = await _start_unless_stopped(app, stop)
    except OSError as err:
        raise StartupError(f"could not start: {_what_to_do(err)}") from err
    if not started:
        return _stopped(app.stuck)
    if app.web is not None:
        _announce_web(app.web, loaded)
    # Every part has started (scheduler and reminders too): a service manager, or the
    # tests' harness, may count on the daemon from here on.
    notify("READY=1", "STATUS=running")
    await stop.wait()
    return _stopped(await app.stop())


def _ignore_late_signals(loop: asyncio.AbstractEventLoop) -> None:
    """The stop is done: from here a SIGINT or SIGTERM is ignored. A duplicate of the one
    that stopped us (``uv run`` forwards its copy late; a group kill reaches every process)
    could otherwise land after the loop let go of its handlers, and the exiting process
    would die of it (status 130 or -15, not 0). Blocked while the handler changes, so no
    signal finds the default action in between."""
    watched = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    try:
        for sig in watched:
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, watched)


def _announce_web(web: WebInterface, loaded: LoadedConfig) -> None:
    """Where the chat is; the login URL with its token only to a person's terminal."""
    kept = (f"web.token in {loaded.source or 'the config'}" if loaded.config.web.token
            else str(loaded.data_dir / WEB_TOKEN))
    if sys.stderr.isatty():
        log.info("web UI at %s (the login URL with its token is printed on the console; the "
                 "token is kept in %s)", web.url, kept)
        # Printed, not logged: the token never goes to the log file.
        print(f"\n  Open the chat: {web.login_url}\n", file=sys.stderr, flush=True)
    else:
        # A service manager's journal or a redirected file keeps the console for anyone
        # who may read it: say where the token is, not the token.
        log.info("web UI at %s; open %s/#token=<the token>, which is kept in %s",
                 web.url, web.url, kept)


class _Signals:
    """SIGINT and SIGTERM: the first stops cleanly, a duplicate of it is ignored, a later
    one exits at once (a stop that hangs must not hold a person who presses Ctrl-C again)."""

    def __init__(self, stop: asyncio.Event) -> None:
        self.stop = stop
        self.first_at: float | None = None

    def received(self, signame: str) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self.first_at is None:
            self.first_at = now
            log.info("%s received: stopping", signame)
            notify("STOPPING=1")
            self.stop.set()
            loop.call_later(DUPLICATE_SIGNAL_SECONDS, self._window_over)
        elif now - self.first_at < DUPLICATE_SIGNAL_SECONDS:
            log.info("%s %.3f s after the first signal: the same stop (sent to the whole "
                     "process group, or forwarded by `uv run`)", signame, now - self.first_at)
        else:
            log.warning("second %s: exiting at once", signame)
            os._exit(EXIT_AT_ONCE)

    def _window_over(self) -> None:
        log.info("still stopping; a second SIGINT or SIGTERM now exits at once")
        notify(ALL_SIGNALS_COUNT)


async def _start_unless_stopped(app: App, stop: asyncio.Event) -> bool:
    """Start the app, unless a signal comes first: False then, with what started stopped.

    Start-up can wait for a homeserver (the Matrix session check gives it seconds); a signal
    must not wait for that. Cancelled, App.start stops the parts it had started.
    """
    from ganglion.app import STOP_SECONDS  # noqa: PLC0415  (as App, in _serve)

    starting = asyncio.create_task(app.start(), name="start")
    signalled = asyncio.create_task(stop.wait(), name="stop-signal")
    try:
        await asyncio.wait({starting, signalled}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        signalled.cancel()
    if starting.done():
        starting.result()  # start-up's own error, if any
        return True
    starting.cancel()
    # App.start's own stop keeps to STOP_SECONDS; the margin covers the cancel reaching it.
    done, _ = await asyncio.wait({starting}, timeout=STOP_SECONDS + 0.5)
    if not done:
        app.stuck.append("start-up")
        log.error("start-up did not stop within %.1f s", STOP_SECONDS)
    elif not starting.cancelled() and (exc := starting.exception()) is not None:
        log.error("start-up failed while stopping: %s", exc)
    return False


def _stopped(stuck: list[str]) -> int:
    if stuck:
        # What hangs may be a thread (a database call waiting on a lock) that would keep the
        # interpreter alive after asyncio.run: leave now, as promised to whoever sent SIGTERM.
        log.error("stopped, but %s did not stop in time; exiting anyway", ", ".join(stuck))
        logging.shutdown()
        os._exit(EXIT_STUCK)
    log.info("stopped")
    return 0


def _what_to_do(err: OSError) -> str:
    """The OS error with the step that fixes it, for the faults a user can fix."""
    where = f" ({err.filename})" if err.filename else ""
    hints = {
        errno.EROFS: "the file system is read-only; make paths.data_dir (or paths.log_dir) "
                     "writable, or point it at a writable folder",
        errno.EACCES: "permission denied; run Ganglion as the user owning the data folder, "
                      "or set paths.data_dir to a folder that user can write",
        errno.ENOSPC: "the disk is full; free some space",
    }
    hint = hints.get(err.errno or 0)
    if hint is None:
        return str(err)
    return f"{hint}{where}"
