"""Evidence for reliability: bad input, killed compiles, determinism, fuzzing, no pickle.

Writes docs/results/reliability.json and .md:
  - the bad-input table (tests/reliability_cases.py): per case the exit code, bitsmith's message and
    whether anything was left behind (output directory, its parent, $TMPDIR), against the documented
    exit code and the words the message must contain;
  - SIGKILL during the artifact write, aimed at each stage of the temporary directory: what the output
    directory held afterwards (the previous artifact or the new one, verified) and whether the next
    compile cleaned up;
  - determinism: each model compiled twice in separate processes into differently named directories,
    file by file (manifest hashes included);
  - the fuzzing campaign's summary, from docs/results/fuzz.json (scripts/fuzz.py);
  - the scan of bitsmith's source for anything that unpickles.

    .venv/bin/python scripts/reliability.py
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import reliability_cases as rc  # noqa: E402  (the table shared with tests/test_reliability.py)
from bitsmith.measure import write_results  # noqa: E402
from bitsmith.pipeline import versions  # noqa: E402

RESULTS = REPO / "docs" / "results"
# (model, recipe, size budget in MB for a per-layer mixed-precision plan: Hutchinson probes, ILP)
DETERMINISM = [("mtcnn_rnet", None, None), ("mtcnn_rnet", "w8a8", None), ("mtcnn_rnet", "w8a8", 0.25),
               ("ppocr_cls", "w8a8", None), ("mobilenet_v2", None, None)]


def table(root: Path) -> list[dict]:
    results = rc.run_table(root / "table")
    for result in results.values():  # the workspace's temporary path says nothing: <work> stands for it
        result.message = result.message.replace(str(root / "table"), "<work>")
        result.leftovers = [p.replace(str(root / "table"), "<work>") for p in result.leftovers]
    rows = []
    for case in rc.CASES:
        row = {"case": case.name, "what": case.what, "via": case.via, "expected_exit_code": case.exit_code,
               "must_mention": list(case.mentions)}
        if case.pending():
            rows.append({**row, "pending": case.pending()})
            continue
        result = results[case.name]
        missing = case.unmentioned(result)
        rows.append({**row, **asdict(result), "missing_words": missing,
                     "pass": result.exit_code == case.exit_code and not result.partial_output and not missing})
    return rows


def fuzz_summary() -> dict | None:
    path = RESULTS / "fuzz.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    keys = ("command", "seed", "cases", "counts", "crashes", "hangs", "compiled", "compile_share", "seconds",
            "started", "rejections_by_error", "converter_failures")
    return {k: data[k] for k in keys} | {"source": "docs/results/fuzz.json"}


def markdown(data: dict) -> str:
    rows, kills, det, fuzz = data["cases"], data["sigkill"], data["determinism"], data["fuzz"]
    passed = sum(1 for r in rows if r.get("pass"))
    runnable = sum(1 for r in rows if "pending" not in r)
    lines = [
        "# Reliability: bad input, killed compiles, determinism, fuzzing",
        "",
        f"Measured {data['date']} (load average {data['load_average_before'][0]:.1f} before, "
        f"{data['load_average_after'][0]:.1f} after, {data['machine']['cores']} cores). "
        "Written by `scripts/reliability.py`.",
        "",
        f"## Bad input: {passed} of {runnable} cases pass" + (f" ({len(rows) - runnable} pending)" if runnable < len(rows) else ""),
        "",
        "Each case runs `python -m bitsmith ...` (cli) or the Python API in a subprocess (api) in a fresh "
        "workspace; *partial output* is anything new or changed under the output directory's parent or "
        "left in the run's $TMPDIR.",
        "",
        "| case | bad input | via | exit code (expected) | partial output | message |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "pending" in r:
            lines.append(f"| {r['case']} | {r['what']} | {r['via']} | pending ({r['expected_exit_code']}) | | {r['pending']} |")
            continue
        message = r["message"].replace("\n", " ").replace("|", "\\|")
        mark = "" if r["pass"] else " **FAIL**"
        lines.append(f"| {r['case']} | {r['what']} | {r['via']} | {r['exit_code']} ({r['expected_exit_code']}){mark} | "
                     f"{str(r['partial_output']).lower()} | {message[:220]} |")
    lines += ["", "## SIGKILL during the artifact write", "",
              "A compile (RNet, batch 2) over a previous artifact (batch 1), killed with SIGKILL as soon as its "
              "temporary directory reached each stage; then a second compile to the same place.", "",
              "| aimed at | killed at | output afterwards | verified | stray entries | after the next compile |",
              "|---|---|---|---|---|---|"]
    for k in kills:
        killed = "finished first" if k["finished_before_kill"] else k["killed_at"]
        lines.append(f"| {k['aimed_at']} | {killed} | {k['output']} | {k['verified']} | "
                     f"{', '.join(k['stray_after_kill']) or '-'} | {', '.join(k['left_after_next_compile'])} |")
    lines += ["", "## Determinism", "",
              "Each model compiled twice, in separate processes, into directories of different names.", "",
              "| model | precision | identical | manifest SHA-256 | files |", "|---|---|---|---|---|"]
    for d in det:
        lines.append(f"| {d['model']} | {d['precision']} | {d['identical']} | `{d['manifest_sha256'][:16]}…` | "
                     f"{', '.join(d['files'])} |")
    lines += ["", "## Fuzzing", ""]
    if fuzz is None:
        lines.append("No campaign recorded yet: run `scripts/fuzz.py --cases 10000`.")
    else:
        counts = fuzz["counts"]
        lines.append(f"`{fuzz['command']}` (seed {fuzz['seed']}): {fuzz['cases']:,} cases in {fuzz['seconds']:,.0f} s, "
                     f"**{fuzz['crashes']} crashes, {fuzz['hangs']} hangs**; {counts.get('ok', 0):,} imported, "
                     f"{counts.get('rejected', 0):,} rejected with a bitsmith error, {fuzz['compiled']:,} compiled. "
                     "Details: [fuzz.md](fuzz.md).")
    lines += ["", "## No pickle", "",
              f"Source scanned: {', '.join(rc.SOURCE_DIRS)}. Uses found: {len(data['pickle_uses'])}"
              + (": " + "; ".join(data["pickle_uses"]) if data["pickle_uses"] else ".")]
    return "\n".join(lines) + "\n"


def main() -> int:
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bitsmith-reliability-") as tmp:
        root = Path(tmp)
        reference = rc.ReferenceArtifact(root)
        rows = table(root)
        kills = [rc.kill_mid_write(root / "kill", reference, point) for point in rc.KILL_POINTS]
        determinism = [rc.compile_twice(root / "determinism", *entry) for entry in DETERMINISM]
    data = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cases": rows,
        "sigkill": kills,
        "determinism": determinism,
        "fuzz": fuzz_summary(),
        "pickle_uses": rc.pickle_uses(REPO),
        "load_average_before": list(load),
        "load_average_after": list(os.getloadavg()),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "versions": versions(),
    }
    write_results(RESULTS, "reliability", data, markdown(data))
    failed = [r["case"] for r in rows if r.get("pass") is False]
    bad_kills = [k["aimed_at"] for k in kills if not k["verified"] or k["output"] not in ("previous", "new")]
    nondeterministic = [f"{d['model']}/{d['precision']}" for d in determinism if not d["identical"]]
    print(f"cases failing: {failed}; kills broken: {bad_kills}; nondeterministic: {nondeterministic}; "
          f"pickle uses: {data['pickle_uses']}")
    return 1 if failed or bad_kills or nondeterministic or data["pickle_uses"] else 0


if __name__ == "__main__":
    sys.exit(main())
