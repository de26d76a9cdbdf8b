"""Dashboard queries as Grafana would send them: shared by the Prometheus end-to-end tests."""

from __future__ import annotations

import json
from pathlib import Path


def board_queries(path: Path) -> list[tuple[str, str, str]]:
    """(board, panel title or 'variable NAME', expression) of every query variable and panel target."""
    board = json.loads(path.read_text())
    out = [(path.stem, f"variable {var['name']}", var["query"]["query"])
           for var in board["templating"]["list"] if var["type"] == "query"]
    out += [(path.stem, panel["title"], t["expr"]) for panel in board["panels"] for t in panel["targets"]]
    return out


def concrete(expr: str, time_range: str = "2m") -> str:
    """A dashboard expression with Grafana's variables replaced as Grafana would (All selected), with
    ``$__range`` the dashboard's time range ``time_range``."""
    for variable in ("$namespace", "$model", "$node", "$training"):
        expr = expr.replace(variable, ".*")
    return expr.replace("$__rate_interval", "15s").replace("$__range", time_range)
