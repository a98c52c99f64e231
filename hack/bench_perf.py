#!/usr/bin/env python3
"""Summarises two `perf report --stdio` outputs of apid for hack/bench.sh, as JSON on stdout.

Usage: bench_perf.py DSO_REPORT SYMBOL_REPORT

DSO_REPORT is `perf report --no-children --sort dso --stdio`, SYMBOL_REPORT the same with
`--sort dso,sym`. Output: {"dso": [[percent, dso, ""], ...], "top": [[percent, dso, symbol], ...]}
with the 12 largest objects and the 25 hottest symbols.
"""

import json
import re
import sys

# "    41.23%  apid              [.] symbol"  or  "    41.23%  [kernel.kallsyms]"
ROW = re.compile(r"\s*([\d.]+)%\s+(\S+)\s*(?:\[[.kgu]\]\s+(.*))?$")


def rows(path, limit):
    out = []
    with open(path, errors="replace") as f:
        for line in f:
            if line.lstrip().startswith("#"):
                continue
            m = ROW.match(line.rstrip())
            if m:
                out.append([float(m.group(1)), m.group(2), (m.group(3) or "").strip()])
    return out[:limit]


def main():
    print(json.dumps({"dso": rows(sys.argv[1], 12), "top": rows(sys.argv[2], 25)}, indent=1))


if __name__ == "__main__":
    main()
