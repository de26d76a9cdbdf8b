"""``python -m edgemodel.split``: list cuts, build split artifacts, profile, plan (for people and scripts).

    python -m edgemodel.split candidates model.onnx
    python -m edgemodel.split build model.onnx --cut auto --mbit 10 --rtt-ms 20 --out split/
    python -m edgemodel.split profile model.onnx --threads 1 --out edge-profile.json
    python -m edgemodel.split plan --edge edge-profile.json --cloud cloud-profile.json --mbit 10 --rtt-ms 20
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgemodel.errors import UserError


def _samples(model: Path, npz: Path | None, count: int) -> list[dict[str, np.ndarray]]:
    from edgemodel.split.graph import load_model, random_inputs

    if npz is None:
        proto = load_model(model)
        return [random_inputs(proto, seed=i) for i in range(count)]
    if not npz.is_file():
        raise UserError(f"--samples: {npz} does not exist; pass an .npz with one array per input name")
    with np.load(npz) as data:
        arrays = {k: data[k] for k in data.files if k != "labels"}
    n = min(len(a) for a in arrays.values())
    return [{k: a[i:i + 1] for k, a in arrays.items()} for i in range(min(n, count))]


def _candidates(args: argparse.Namespace) -> int:
    from edgemodel.split.graph import find_cut_candidates

    cuts = find_cut_candidates(args.model)
    print(f"{'#':>3}  {'tensor':<40} {'op':<18} {'shape':<24} {'fp32 bytes/sample':>18}")
    for c in cuts:
        elements = c.elements_per_sample()
        size = f"{4 * elements:,}" if elements is not None else "?"
        print(f"{c.index:>3}  {c.tensor[:40]:<40} {c.op_type:<18} {str(list(c.shape))[:24]:<24} {size:>18}")
    print(f"{len(cuts)} candidate cuts")
    return 0


def _build(args: argparse.Namespace) -> int:
    from edgemodel.split.artifacts import SplitSettings, build_split
    from edgemodel.split.planner import Link

    link = Link(args.mbit, args.rtt_ms) if args.mbit is not None else None
    settings = SplitSettings(cut=args.cut, wire=args.wire, link=link, edge_slowdown=args.edge_slowdown,
                             threads=args.threads)
    result = build_split(args.model, _samples(args.model, args.samples, args.count), args.out, settings)
    m = result.manifest
    print(f"cut {m['cut']['tensor']}: head {result.head_path}, tail {result.tail_path}, "
          f"max abs diff {m['verification']['maxAbsDiff']:.3g}; manifest {result.manifest_path}")
    return 0


def _profile(args: argparse.Namespace) -> int:
    from edgemodel.split.profile import profile_split

    profile = profile_split(args.model, _samples(args.model, args.samples, args.count), threads=args.threads,
                            runs=args.runs)
    profile.save(args.out)
    print(f"{len(profile.cuts)} cuts profiled on {profile.provider}; whole model {profile.full_ms:.2f} ms; "
          f"wrote {args.out}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from edgemodel.split.planner import Link, Objective, choose_cut, format_plan
    from edgemodel.split.profile import SplitProfile, planner_costs

    for path in (args.edge, args.cloud):
        if not path.is_file():
            raise UserError(f"profile: {path} does not exist; write it with `python -m edgemodel.split profile`")
    costs = planner_costs(SplitProfile.load(args.edge), SplitProfile.load(args.cloud), wire=args.wire)
    objective = Objective.EDGE_COMPUTE if args.budget_ms is not None else Objective.LATENCY
    plan = choose_cut(costs, Link(args.mbit, args.rtt_ms), objective, args.budget_ms)
    print(format_plan(plan))
    print(f"chosen: {plan.chosen.label} ({plan.chosen.total_ms:.1f} ms)"
          + ("" if plan.budget_met else f"; no option meets the {args.budget_ms} ms budget"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m edgemodel.split", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cand = sub.add_parser("candidates", help="list the tensors the model can be cut at")
    cand.add_argument("model", type=Path)
    cand.set_defaults(func=_candidates)
    for name, func, helptext in (("build", _build, "write head.onnx, tail.onnx and split.json"),
                                 ("profile", _profile, "measure every cut on this machine")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("model", type=Path)
        p.add_argument("--samples", type=Path, help=".npz with one array per input (default: random inputs)")
        p.add_argument("--count", type=int, default=4, help="how many samples to use")
        p.add_argument("--threads", type=int, default=None)
        p.add_argument("--out", type=Path, required=True)
        p.set_defaults(func=func)
        if name == "build":
            p.add_argument("--cut", default="auto", help="tensor or node name, or auto")
            p.add_argument("--wire", default="int8")
            p.add_argument("--mbit", type=float, help="link bandwidth (auto)")
            p.add_argument("--rtt-ms", type=float, default=20.0)
            p.add_argument("--edge-slowdown", type=float, default=4.0)
        else:
            p.add_argument("--runs", type=int, default=20)
    plan = sub.add_parser("plan", help="choose a cut from an edge and a cloud profile")
    plan.add_argument("--edge", type=Path, required=True)
    plan.add_argument("--cloud", type=Path, required=True)
    plan.add_argument("--mbit", type=float, required=True)
    plan.add_argument("--rtt-ms", type=float, default=20.0)
    plan.add_argument("--wire", default="int8")
    plan.add_argument("--budget-ms", type=float, help="minimise edge compute within this latency budget")
    plan.set_defaults(func=_plan)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except (UserError, ValueError) as exc:
        print(f"python -m edgemodel.split {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
