"""What parsing one EdgeAgent into the operator's AgentView costs (every watch event and relist pays it).

    .venv/bin/python bench/operator/agent_parse.py --agents 10000 --rounds 5 --baseline 888361c

Times ``AgentView.from_body`` over N EdgeAgents (two reported models each) in interleaved rounds; with
``--baseline REV`` the ``scheduling.py`` of that git revision is timed in the same rounds (e.g. the
dict-reading parser before the typed ``EdgeAgentStatus`` models), so load hits both alike.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from edgemodel_operator.scheduling import AgentView  # noqa: E402
from tests.operator.builders import agent_body, assignment, report  # noqa: E402


def baseline_parser(rev: str) -> Any:
    source = subprocess.run(["git", "show", f"{rev}:operator/edgemodel_operator/scheduling.py"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "baseline_scheduling.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_scheduling", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_scheduling"] = module
    spec.loader.exec_module(module)
    return module.AgentView


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", default="", help="git revision whose AgentView to time alongside")
    args = parser.parse_args()
    bodies = [agent_body(f"n{i}", models=[assignment(1)],
                         reported=[report(1, requests=5, p95=1.2), report(2, "Loading", name="other")])
              for i in range(args.agents)]
    parsers = {"typed (current)": AgentView}
    if args.baseline:
        parsers[f"baseline {args.baseline}"] = baseline_parser(args.baseline)
    times: dict[str, list[float]] = {name: [] for name in parsers}
    for _ in range(args.rounds):
        for name, cls in parsers.items():
            started = time.perf_counter()
            for body in bodies:
                cls.from_body(body)
            times[name].append(time.perf_counter() - started)
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name}: {median * 1e6 / args.agents:.1f} us per EdgeAgent, {median * 1000:.0f} ms per "
              f"{args.agents} (median of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
