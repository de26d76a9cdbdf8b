"""``edgemodel operator``: run the kopf operator (conversion Jobs, scheduling, canary rollouts).

Every setting is a flag and an ``EDGEMODEL_OPERATOR_<NAME>`` environment variable (flags win);
see ``edgemodel_operator.settings.OperatorSettings``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

ENV_PREFIX = "EDGEMODEL_OPERATOR_"

# (flag, settings field, type, metavar); help texts come from the settings' docstrings.
FLAGS: list[tuple[str, str, Any, str]] = [
    ("--kubeconfig", "kubeconfig", Path, "FILE"),
    ("--store-url", "store_url", str, "URL"),
    ("--artifact-base-url", "artifact_base_url", str, "URL"),
    ("--store-token-secret", "store_token_secret", str, "NAME"),
    ("--store-token-file", "store_token_file", Path, "FILE"),
    ("--artifact-retention", "artifact_retention", str, "keep|delete"),
    ("--signing-key-secret", "signing_key_secret", str, "NAME"),
    ("--converter-image", "converter_image", str, "IMG"),
    ("--converter-image-pull-policy", "converter_image_pull_policy", str, "POLICY"),
    ("--converter-service-account", "converter_service_account", str, "NAME"),
    ("--converter-cpu-request", "converter_cpu_request", str, "QTY"),
    ("--converter-cpu-limit", "converter_cpu_limit", str, "QTY"),
    ("--converter-memory-request", "converter_memory_request", str, "QTY"),
    ("--converter-memory-limit", "converter_memory_limit", str, "QTY"),
    ("--converter-backoff-limit", "converter_backoff_limit", int, "N"),
    ("--converter-deadline-seconds", "converter_deadline_seconds", int, "S"),
    ("--prometheus-url", "prometheus_url", str, "URL"),
    ("--heartbeat-timeout-seconds", "heartbeat_timeout_seconds", float, "S"),
    ("--lease-namespace", "lease_namespace", str, "NS"),
    ("--resync-seconds", "resync_seconds", float, "S"),
    ("--continual-tick-seconds", "continual_tick_seconds", float, "S"),
    ("--history-limit", "history_limit", int, "N"),
    ("--max-parallel-writes", "max_parallel_writes", int, "N"),
    ("--metrics-port", "metrics_port", int, "N"),
    ("--liveness-port", "liveness_port", int, "N"),
    ("--webhook-port", "webhook_port", int, "N"),
    ("--webhook-cert", "webhook_cert", Path, "FILE"),
    ("--webhook-key", "webhook_key", Path, "FILE"),
    ("--bind-address", "bind_address", str, "ADDR"),
    ("--priority", "priority", int, "N"),
    ("--peering-lifetime-seconds", "peering_lifetime_seconds", int, "S"),
]


def _help(field: str) -> str:
    try:
        from edgemodel_operator.settings import OperatorSettings
    except ImportError:  # an install without the operator extra (the converter and agent images)
        return f"(needs edgemodel[operator]) [env {ENV_PREFIX}{field.upper()}]"

    description = OperatorSettings.model_fields[field].description or ""
    return f"{description} [env {ENV_PREFIX}{field.upper()}]".replace("%", "%%")


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "operator", help="run the operator: conversion Jobs, scheduling and canary rollouts to edge agents",
        description="Run the edgemodel operator (kopf). Every flag is also an EDGEMODEL_OPERATOR_* variable.",
        argument_default=argparse.SUPPRESS,
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", dest="namespaces", action="append", metavar="NS",
                       help="handle EdgeModels of this namespace (repeatable) [env EDGEMODEL_OPERATOR_NAMESPACES, "
                            "a JSON list]")
    scope.add_argument("-A", "--all-namespaces", dest="all_namespaces", action="store_true",
                       help="handle EdgeModels of every namespace (the default)")
    peering = p.add_mutually_exclusive_group()
    peering.add_argument("--peering", dest="peering", metavar="NAME",
                         help="kopf peering object: with 2 replicas one works, the other waits "
                              "[env EDGEMODEL_OPERATOR_PEERING]")
    peering.add_argument("--standalone", dest="standalone", action="store_true",
                         help="run without peering (one replica) [env EDGEMODEL_OPERATOR_STANDALONE]")
    for flag, field, type_, metavar in FLAGS:
        p.add_argument(flag, dest=field, type=type_, metavar=metavar, help=_help(field))


def settings_from_args(args: argparse.Namespace) -> Any:
    """OperatorSettings from flags over environment variables; a UserError naming the flag on bad input."""
    from pydantic import ValidationError

    from edgemodel.errors import UserError
    from edgemodel_operator.settings import OperatorSettings

    given = {k: v for k, v in vars(args).items() if k in OperatorSettings.model_fields}
    if getattr(args, "all_namespaces", False):
        given["namespaces"] = []
    try:
        return OperatorSettings(**given)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            field = str(err["loc"][0]) if err["loc"] else ""
            flag = "--" + field.replace("_", "-") if field else "settings"
            message = "required; set the flag or the environment variable" if err["type"] == "missing" else err["msg"]
            problems.append(f"{flag} ({ENV_PREFIX}{field.upper()}): {message.removeprefix('Value error, ')}")
        raise UserError("; ".join(problems)) from exc


def run(args: argparse.Namespace) -> int:
    from edgemodel_operator.main import run as run_operator

    run_operator(settings_from_args(args))
    return 0
