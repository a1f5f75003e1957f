"""``python -m bench``: the full benchmark (``make bench``); ``--quick`` for a smoke run
(``make bench-quick``); ``--startup`` for eager and compiled start-up times alone;
``--report RESULT`` to regenerate the page and chart from a result file.

The full run writes ``bench/results/full.json``, ``docs/benchmarks.md`` and
``docs/benchmarks.png``; ``--startup`` writes ``bench/results/startup.json``; the quick run
writes under ``bench/results/tmp/`` only.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from bench import report
from bench.plan import PLANS
from bench.run import RESULTS, Bench
from bench.servers import ROOT

OUTPUTS = {
    "full": (RESULTS / "full.json", ROOT / "docs" / "benchmarks.md",
             ROOT / "docs" / "benchmarks.png"),
    "quick": (RESULTS / "tmp" / "quick.json", RESULTS / "tmp" / "quick.md",
              RESULTS / "tmp" / "quick.png"),
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke run, a few minutes")
    parser.add_argument("--startup", action="store_true",
                        help="start-up times only, eager and compiled, twice each (~15 min)")
    parser.add_argument("--report", type=Path, help="only rewrite page and chart from this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per readiness poll
    if args.startup:
        result = Bench(PLANS["startup"], RESULTS / "startup.json").run_startups()
        print(json.dumps(result["startup_s"]))
        return
    name = "quick" if args.quick else "full"
    result_file, page, chart = OUTPUTS[name]
    if args.report:
        result_file = args.report
        result = json.loads(result_file.read_text())
    else:
        result = Bench(PLANS[name], result_file).run()
    page.parent.mkdir(parents=True, exist_ok=True)
    source = str(result_file.resolve().relative_to(ROOT))
    for t in report.write(result, source, page, chart):
        print(f"{'MET ' if t.met else 'MISS'} {t.name} [{t.level}]: {t.ratio:.2f} "
              f"({'>=' if t.at_least else '<='} {t.bound}) {t.detail}")
    print(f"wrote {result_file}, {page}, {chart}")


if __name__ == "__main__":
    main()
