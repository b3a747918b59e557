#!/usr/bin/python3
"""
cpuper: CPU time per request of each process in a suite run, from its JSON.

    /usr/bin/python3 bench/cpuper.py bench/results/<stamp>.json

For every row of a bench/suite.py run, per run: the client's CPU seconds (ringkv-bench), the
master's and the replica's (each server's whole process, from /proc/PID/stat around the run),
each divided by the run's requests; the table shows the medians over the row's runs, in
nanoseconds per request, and how many of the machine's CPUs the three kept busy.

"by CPU" is the row's total CPU per request, compared with the first row of the same workload
and pipeline (ringkv alone in the suite's order): what the row's ops/s would be, relative to
that row, if both runs were limited by the machine's CPUs alone and kept them as busy.
"measured" is the suite's own ratio for the row over that first row (the ratio of medians).
Where the two agree, the row's throughput is set by the CPU that replication adds, not by
waiting.
"""

import json
import statistics
import sys


def per_run(run):
    n = run["requests"]
    servers = run.get("server_cpu_s") or {}
    master = sum(v for k, v in servers.items() if v and not k.endswith("-replica"))
    replica = sum(v for k, v in servers.items() if v and k.endswith("-replica"))
    client = run["client_cpu_s"]
    return {"client": client / n * 1e9, "master": master / n * 1e9,
            "replica": replica / n * 1e9, "total": (client + master + replica) / n * 1e9,
            "busy": (client + master + replica) / run["seconds"]}


def main(argv):
    if len(argv) != 2:
        print("usage: bench/cpuper.py RESULTS.json", file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        data = json.load(f)
    print("| config | mode | workload | P | ops/s | client ns | master ns | replica ns | "
          "total ns | CPUs busy | by CPU | measured |")
    print("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    first = {}
    for row in data["rows"]:
        runs = [per_run(r) for r in row.get("runs", [])
                if r.get("ok") and r.get("requests") and r.get("client_cpu_s") is not None]
        if row.get("status") != "ok" or not runs:
            continue
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        key = (row["workload"], row["pipeline"])
        base = first.setdefault(key, (med["total"], row["ops"]))
        print("| %s | %s | %s | %d | {:,.0f} | %.0f | %.0f | %.0f | %.0f | %.2f | %.2f | %.2f |"
              .format(row["ops"])
              % (row["config"], row["mode"], row["workload"], row["pipeline"], med["client"],
                 med["master"], med["replica"], med["total"], med["busy"],
                 base[0] / med["total"], row["ops"] / base[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
