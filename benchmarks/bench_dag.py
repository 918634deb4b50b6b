"""Planning time of `snakemake -n` over 1,000 shards with every stage enabled, next to a bare
Snakefile planning the same number of jobs.

    python benchmarks/bench_dag.py [--shards 1000] [--baseline-shards 100] [--repeat 3] [--profile] [--json out.json]

A temporary work directory holds what a re-run of a large URL-list source has on disk: a
manifest of `--shards` shards written directly (25 documents each, MANIFEST_SCHEMA) and the URL
list those documents came from, with the manifest job's index listing the shards (parsing
reads it; the source listing's fingerprint is computed as on every run). Every model stage 02-09 gets a manual endpoint on a closed
127.0.0.1 port (a dry run never connects); OCR uses nemotron-parse so it needs one too; export
and report stay on. Nothing has been computed yet, so every job is planned.

Side by side in the same invocation:
  all stages, --shards            the target
  bare Snakefile, same jobs       what Snakemake alone costs for that many jobs: the same rules
                                  per shard, static inputs, no config, no input functions
  bare with script: and log:      the same, with the two directives every rule of ours needs;
                                  printed to show Snakemake's own share (no target)
  all stages, --baseline-shards   shows whether time grows linearly with shards
  seed only,  --shards            what Snakemake costs for the shard count alone
The target and the bare Snakefile run --repeat times, alternately, so that a slow spell of a
shared machine falls on both; each line prints the median run's wall and CPU time, planned jobs,
ms per job and the ratio to the bare Snakefile.
--profile reruns the target case under cProfile and prints where the time goes, our code
(longdoc_sdg, the .smk input/params functions) listed apart from Snakemake's.

Exit status 1 when the median of the paired CPU ratios (target run i over bare run i) is over
1.5x. CPU, not wall time: on a loaded machine wall time counts the other processes too.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import yaml  # noqa: E402

from longdoc_sdg.ids import shard_name, stable_id  # noqa: E402
from longdoc_sdg.manifest import INDEX_NAME, MANIFEST_SCHEMA  # noqa: E402
from longdoc_sdg.registry import model_stages  # noqa: E402

TARGET_RATIO = 1.5  # the workflow's planning time over a bare Snakefile's, same number of jobs
DOCS_PER_SHARD = 25  # the default sharding.documents_per_shard


def closed_port() -> int:
    # Bind then release: nothing listens there afterwards, so any accidental connect fails fast.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_workdir(workdir: Path, shards: int) -> None:
    """Manifest shards and the URL list they were assigned from."""
    manifest = workdir / "results" / "manifest"
    manifest.mkdir(parents=True)
    urls = []
    for index in range(shards):
        rows = []
        for doc in range(DOCS_PER_SHARD):
            url = f"https://example.org/docs/{index:05d}/{doc:02d}.pdf"
            urls.append(url)
            rows.append(
                {
                    "doc_id": stable_id("url", url),
                    "source_kind": "urls",
                    "source": url,
                    "url": url,
                    "date": None,
                    "extra": "{}",
                }
            )
        pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), manifest / f"{shard_name(index)}.parquet")
    (workdir / "urls.txt").write_text("\n".join(urls) + "\n")
    # The manifest job's index, as a finished run leaves it (parsing reads it, writes nothing).
    index = {"documents_per_shard": DOCS_PER_SHARD, "shards": [shard_name(i) for i in range(shards)]}
    (manifest / INDEX_NAME).write_text(json.dumps(index))


def write_config(workdir: Path, all_stages: bool) -> None:
    base_url = f"http://127.0.0.1:{closed_port()}/v1"
    stages, models = {}, {}
    for stage in model_stages():
        if all_stages:
            endpoint = {"base_url": base_url, "model": f"{stage}-model", "api_key_env": None}
            models[stage] = {"endpoint": endpoint}
            stages[stage] = {"model": stage}
        else:
            stages[stage] = {"enabled": False}
    if all_stages:
        stages["ocr"]["settings"] = {"engine": "nemotron-parse"}
    config = {
        "results_dir": "results",
        "source": {"settings": {"kind": "urls", "urls": {"path": str(workdir / "urls.txt")}}},
        "sharding": {"settings": {"documents_per_shard": DOCS_PER_SHARD}},
        "models": models,
        "stages": stages,
    }
    if not all_stages:
        config["export"] = {"enabled": False}
        config["report"] = {"enabled": False}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


def snakemake_args(workdir: Path) -> list[str]:
    # The local profile, as users run it (rerun triggers, latency wait, cores).
    return [
        "--snakefile",
        str(ROOT / "workflow" / "Snakefile"),
        "--profile",
        str(ROOT / "profiles" / "local"),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        "-n",
    ]


def job_table(output: str) -> dict[str, int]:
    """The 'Job stats' table the dry run prints: rule -> jobs, and 'total'."""
    table, inside = {}, False
    for line in output.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            inside = True
            continue
        if inside and len(parts) == 2 and parts[1].isdigit():
            table[parts[0]] = int(parts[1])
            if parts[0] == "total":
                return table
    raise RuntimeError(f"no job total in the dry run's output:\n{output[-3000:]}")


def planned_jobs(output: str) -> int:
    return job_table(output)["total"]


def bare_snakefile(jobs: dict[str, int], shards: int) -> str:
    """A Snakefile planning the same jobs per rule as `jobs` with nothing but static patterns:
    one seed job per shard, rules with k jobs per shard reading that shard's seed output,
    run-wide rules reading every seed output."""
    lines = [
        "rule seed:",
        "    output:",
        '        "bare/seed/{i}.txt",',
        "    shell:",
        '        "touch {output}"',
        "",
    ]
    targets = ['expand("bare/seed/{i}.txt", i=SHARDS)']
    for rule, count in jobs.items():
        if rule in ("all", "total", "seed"):
            continue
        if count % shards == 0:
            per_shard = count // shards
            pattern = f"bare/{rule}/{{k}}_{{i}}.txt"
            source = '"bare/seed/{i}.txt"'
            targets.append(f'expand("{pattern}", k=range({per_shard}), i=SHARDS)')
        else:
            pattern = f"bare/{rule}/{{k}}.txt"
            source = 'expand("bare/seed/{i}.txt", i=SHARDS)'
            targets.append(f'expand("{pattern}", k=range({count}))')
        lines += [
            "",
            f"rule {rule}:",
            "    input:",
            f"        {source},",
            "    output:",
            f'        "{pattern}",',
            "    shell:",
            '        "touch {output}"',
            "",
        ]
    rule_all = ["rule all:", "    default_target: True", "    input:"] + [f"        {t}," for t in targets]
    return "\n".join([f"SHARDS = range({shards})", "", ""] + rule_all + [""] + lines) + "\n"


def with_script_and_log(snakefile: str) -> str:
    """The bare Snakefile with every rule run by a `script:` and keeping a `log:`, as ours do."""
    out = []
    for line in snakefile.splitlines():
        if line == "    shell:":
            out.append("    script:")
        elif line == '        "touch {output}"':
            out.append('        "noop.py"')
        else:
            out.append(line)
        if out[-2:-1] == ["    output:"]:
            out += ["    log:", f'        "logs/{line.strip().strip(",").strip(chr(34))}.log",']
    return "\n".join(out) + "\n"


def bare_workdir(tmp: Path, name: str, jobs: dict[str, int], shards: int, script: bool) -> Path:
    workdir = tmp / name
    workdir.mkdir()
    snakefile = bare_snakefile(jobs, shards)
    if script:
        snakefile = with_script_and_log(snakefile)
        (workdir / "noop.py").write_text("pass\n")
    (workdir / "Snakefile").write_text(snakefile)
    return workdir


def median_run(name: str, shards: int, all_stages: bool, runs: list[dict]) -> dict:
    middle = sorted(runs, key=lambda r: r["cpu_s"])[len(runs) // 2]
    return {"name": name, "shards": shards, "all_stages": all_stages, "repeats": len(runs), **middle}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def dry_run(workdir: Path, bare: bool = False) -> dict:
    # CPU time next to wall time: on a loaded machine wall time overstates what the run costs.
    args = ["--snakefile", str(workdir / "Snakefile"), "--directory", str(workdir), "--cores", "1", "-n"]
    cpu, start = _children_cpu(), time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", *(args if bare else snakemake_args(workdir))],
        capture_output=True,
        text=True,
        cwd=workdir,
    )
    wall = time.monotonic() - start
    cpu = _children_cpu() - cpu
    if result.returncode != 0:
        raise RuntimeError(f"dry run failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    table = job_table(result.stdout + result.stderr)
    jobs = table["total"]
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "jobs": jobs,
        "ms_per_job": round(wall / jobs * 1000, 3),
        "rules": table,
    }


def workflow_workdir(tmp: Path, name: str, shards: int, all_stages: bool) -> Path:
    workdir = tmp / name
    workdir.mkdir()
    build_workdir(workdir, shards)
    write_config(workdir, all_stages)
    return workdir


def case(tmp: Path, name: str, shards: int, all_stages: bool) -> dict:
    workdir = workflow_workdir(tmp, name, shards, all_stages)
    return {"name": name, "shards": shards, "all_stages": all_stages, **dry_run(workdir)}


def ours(filename: str) -> bool:
    return "longdoc_sdg" in filename or filename.endswith(".smk") or filename.endswith("Snakefile")


def profile(workdir: Path, top: int) -> str:
    """The target dry run in this process under cProfile; our functions listed apart."""
    from snakemake.cli import main as snakemake_main

    profiler = cProfile.Profile()
    cwd = os.getcwd()
    os.chdir(workdir)
    # The dry run's listing of every job goes to a file (fd level: Snakemake's log handlers
    # hold their own references to the streams).
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(workdir / "profiled-dry-run.log", "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        profiler.enable()
        try:
            snakemake_main(snakemake_args(workdir))
        except SystemExit:
            pass
        finally:
            profiler.disable()
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.chdir(cwd)
    stats = pstats.Stats(profiler)
    total = stats.total_tt
    rows = []
    for (filename, line, func), (cc, nc, tt, ct, callers) in stats.stats.items():
        if ours(filename):
            rows.append((ct, tt, nc, f"{Path(filename).name}:{line}({func})"))
    rows.sort(reverse=True)
    out = io.StringIO()
    out.write(f"profile: {total:.1f}s in total (profiler overhead included)\n")
    out.write("  our code, by cumulative time (includes what it calls):\n")
    out.write(f"  {'cum s':>7} {'own s':>7} {'calls':>8}  function\n")
    for ct, tt, nc, name in rows[:top]:
        out.write(f"  {ct:7.2f} {tt:7.2f} {nc:8d}  {name}\n")
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(top)
    out.write("  everything, by own time:\n")
    lines = stream.getvalue().splitlines()
    header = next(i for i, line in enumerate(lines) if "ncalls" in line)
    out.write("\n".join("  " + line for line in lines[header : header + top + 1]))
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--baseline-shards", type=int, default=100)
    parser.add_argument("--profile", action="store_true", help="also profile the target case (cProfile)")
    parser.add_argument("--top", type=int, default=25, help="rows of the profile listing")
    parser.add_argument("--repeat", type=int, default=3, help="runs of the target and the bare Snakefile, alternately")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    import snakemake

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; "
        f"snakemake {snakemake.__version__}; {DOCS_PER_SHARD} documents per shard"
    )
    with tempfile.TemporaryDirectory(prefix="bench-dag-") as tmp:
        tmp_path = Path(tmp)
        target_dir = workflow_workdir(tmp_path, "all_target", args.shards, True)
        first = dry_run(target_dir)
        bare_dir = bare_workdir(tmp_path, "bare", first["rules"], args.shards, script=False)
        script_dir = bare_workdir(tmp_path, "bare_script", first["rules"], args.shards, script=True)
        # Alternately, so that a slow spell of the machine falls on both.
        targets, bares = [first], [dry_run(bare_dir, bare=True)]
        for _ in range(args.repeat - 1):
            targets.append(dry_run(target_dir))
            bares.append(dry_run(bare_dir, bare=True))
        paired = sorted(t["cpu_s"] / b["cpu_s"] for t, b in zip(targets, bares))
        target = median_run("all_target", args.shards, True, targets)
        bare = median_run("bare", args.shards, False, bares)
        runs = [
            target,
            bare,
            {"name": "bare_script", "shards": args.shards, "all_stages": False, **dry_run(script_dir, bare=True)},
            case(tmp_path, "all_baseline", args.baseline_shards, True),
            case(tmp_path, "seed_only", args.shards, False),
        ]
        print(f"\n{'case':<14} {'shards':>6} {'jobs':>7} {'wall s':>8} {'CPU s':>7} {'ms/job':>8} {'/ bare':>7}")
        for run in runs:
            run.pop("rules", None)
            run["ratio_to_bare"] = round(run["cpu_s"] / bare["cpu_s"], 3)
            print(
                f"{run['name']:<14} {run['shards']:>6} {run['jobs']:>7} {run['wall_s']:>8.2f} {run['cpu_s']:>7.2f} "
                f"{run['ms_per_job']:>8.3f} {run['ratio_to_bare']:>7.3f}"
            )
        _, _, script_bare, baseline, seed_only = runs
        print(
            f"\nall stages vs bare, run by run (CPU): {', '.join(f'{r:.2f}x' for r in paired)}; "
            f"vs bare with script: and log: {target['cpu_s'] / script_bare['cpu_s']:.2f}x"
        )
        scale = target["cpu_s"] / baseline["cpu_s"]
        print(
            f"all stages {args.shards} vs {args.baseline_shards} shards: {scale:.2f}x the time for "
            f"{target['jobs'] / baseline['jobs']:.1f}x the jobs"
        )
        print(
            f"all stages vs seed only ({args.shards} shards): {target['cpu_s'] / seed_only['cpu_s']:.2f}x the time for "
            f"{target['jobs'] / seed_only['jobs']:.1f}x the jobs"
        )
        if args.profile:
            print()
            print(profile(target_dir, args.top))
    ratio = paired[len(paired) // 2]
    ok = ratio <= TARGET_RATIO
    print(
        f"\n{'PASS' if ok else 'FAIL'}: {target['jobs']} jobs planned in {target['cpu_s']:.1f}s CPU "
        f"({target['wall_s']:.1f}s wall); a bare Snakefile with {bare['jobs']} jobs {bare['cpu_s']:.1f}s CPU "
        f"({bare['wall_s']:.1f}s wall): median of {len(paired)} paired runs {ratio:.2f}x CPU "
        f"(target <= {TARGET_RATIO}x); load {os.getloadavg()[0]:.2f}"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "runs": runs,
                    "paired_cpu_ratios": paired,
                    "target_ratio": TARGET_RATIO,
                    "load_average": os.getloadavg()[0],
                },
                indent=2,
            )
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
