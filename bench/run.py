"""The benchmark suite: ssh3 (per QUIC backend) against OpenSSH, measured in one run on
this machine, all on 127.0.0.1.

    python bench/run.py [--quick] [--only setup,throughput,scale,interactive]
                        [--backends aioquic,qh3] [--runs N] [--size-mib N]
                        [--conversations N] [--rate-seconds S] [--rtts 0,50,100]

1. setup        wall time of `<client> host true` at RTT 0, 50 and 100 ms, and the
                number of round trips it costs
2. throughput   bytes through `cat` on an exec channel and through a local TCP
                forward: MB/s, CPU s/GB on each side, sha256 check
3. interactive  one-byte echo through a pty shell: median and p99 of 500 round trips
4. scale        server memory with N idle conversations, and new conversations per
                second from 4 parallel clients; server RSS after many finished
                conversations, server CPU per conversation
5. udp          DNS queries/s through -forward-udp to a local dnsmasq

The reference Go ssh3 joins when $SSH3_REF_BIN_DIR names a folder with its `ssh3` and
`ssh3-server` (root needed). Tables go to stdout, progress to stderr, and every sample
to bench/results/<time>.json. Needs root for sshd and NFQUEUE; see bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import (
    BENCH_DIR,
    BenchError,
    Lab,
    System,
    fmt_range,
    interrupt,
    ratio,
    render_table,
    summary,
)
from latency import bench_setup, echo_latency
from scale import bench_scale
from tcp_delay import RULE_TAG, remove_tagged_rules
from throughput import bench_throughput
from udp_dns import bench_udp

BENCHES = ("setup", "throughput", "udp", "scale", "interactive")
MB = 1e6


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- tables


def rtt_slope(rtts: list[float], medians: list[float | None]) -> str:
    """Round trips per connection as the least-squares slope of time over RTT: less
    sensitive to one noisy cell than a single difference."""
    pts = [(r / 1000, m) for r, m in zip(rtts, medians, strict=True) if m is not None]
    if len(pts) < 2:
        return "n/a"
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    den = sum((x - mx) ** 2 for x, _ in pts)
    return f"{sum((x - mx) * (y - my) for x, y in pts) / den:.1f}" if den else "n/a"


def setup_table(res: dict[str, Any], systems: list[System]) -> str:
    rtts = res["rtts_ms"]
    methods = res["methods"]
    notes = [f"wall ms of `<client> user@127.0.0.1 true`, median [min–max] of {res['runs']} "
             "runs (after one warm-up), systems interleaved",
             f"QUIC latency: {methods.get('ssh3', methods.get('ref', 'n/a'))} "
             "(bench/udp_relay.py), RTT/2 each way",
             f"TCP latency: {methods.get('openssh', 'n/a')}",
             "RTTs@r = (median at RTT r − median at RTT 0) / r; RTTs fit = least-squares "
             "slope of the medians over all RTTs; ×OSSH = median / OpenSSH's"]
    if res.get("nfqueue_unavailable"):
        notes.append(f"NFQUEUE unavailable: {res['nfqueue_unavailable']}")
    header = ["system", *[f"RTT {r:g}" for r in rtts],
              *[f"RTTs@{r:g}" for r in rtts if r], "RTTs fit", *[f"×OSSH@{r:g}" for r in rtts],
              "fail"]
    medians: dict[str, dict[str, float | None]] = {}
    for s in systems:
        rec = res["systems"].get(s.name, {})
        medians[s.name] = {str(r): summary(rec.get(str(r), {}).get("samples", [])).get("median")
                           for r in rtts}
    ossh = next((s.name for s in systems if s.kind == "openssh"), None)
    rows = []
    for s in systems:
        rec = res["systems"].get(s.name, {})
        med = medians[s.name]
        cells = [s.name]
        for r in rtts:
            sm = summary(rec.get(str(r), {}).get("samples", []))
            cells.append(fmt_range(sm, 1000))
        base = med.get(str(rtts[0])) if rtts else None
        for r in rtts:
            if r:
                m = med.get(str(r))
                cells.append(f"{(m - base) * 1000 / r:.1f}" if m and base else "n/a")
        cells.append(rtt_slope(rtts, [med.get(str(r)) for r in rtts]))
        for r in rtts:
            ref = medians[ossh].get(str(r)) if ossh else None
            cells.append(ratio(med.get(str(r)), ref))
        cells.append(str(sum(rec.get(str(r), {}).get("failures", 0) for r in rtts)))
        rows.append(cells)
    table = render_table("1. Session setup", notes, header, rows)
    errors = [f"  {name} RTT {r}: {e.strip()}" for name, rec in res["systems"].items()
              for r, v in rec.items() for e in v.get("errors", [])[:1]]
    return table + ("\n" + "\n".join(errors[:6]) if errors else "")


def throughput_table(res: dict[str, Any]) -> str:
    size = res["bytes"]
    gb = size / 1e9
    notes = [f"{size / 2**20:g} MiB of random bytes; MB/s = 10^6 B/s over the data phase "
             f"(exec: first byte back to EOF; forward: first byte sent to the sink's "
             f"answer), so connection setup is left out; median [min–max] of {res['runs']} "
             "runs; `wall s` = the whole exec command",
             "exec: `client host cat < data`, so the data goes up and back down (MiB each "
             "way); forward: one way to a local sink that hashes it",
             "CPU s/GB: per 10^9 payload bytes; client = its rusage (exec, setup included) "
             "or /proc times over the transfer (forward); server = /proc utime+stime of its "
             "process tree (exec: setup and the remote cat included)",
             "×chacha/×aes = MB/s over OpenSSH's with that cipher, same mode; 2 cores "
             "shared by client, server and the bench's own data source/sink",
             "raw: the same bytes over one stream between a bare client and server of that "
             "QUIC library (bench/raw_quic.py: no HTTP/3, no SSH3; the server on ssh3-server's "
             "UDP I/O, the library's own connect, same 16 MiB windows); ×raw = -L MB/s over "
             "raw's, same backend"]
    base: dict[tuple[str, str], float] = {}
    raw: dict[str, float] = {}  # the bare QUIC stream's MB/s per ssh3 system
    rows_out = []
    stats = []
    for r in res["rows"]:
        ok = [x for x in r["runs"] if x.get("exit") == 0 and x.get("sha_ok")]
        mbps = summary(size / (x.get("data_seconds") or x["seconds"]) / MB for x in ok)
        stats.append((r, ok, mbps))
        if r["mode"] == "raw" and mbps.get("n"):
            raw[r["system"]] = mbps["median"]
        if r["label"].startswith("OpenSSH") and mbps.get("n"):
            cipher = "chacha" if "chacha" in r["label"] else "aes"
            base[(r["mode"], cipher)] = mbps["median"]
    for r, ok, mbps in stats:
        if r["note"]:
            rows_out.append([r["mode"], r["label"], r["note"], "", "", "", "", "", "", ""])
            continue
        bad = len(r["runs"]) - len(ok)
        med = mbps.get("median")
        client = summary(x["client_cpu"] / gb for x in ok)
        server = summary(x["server_cpu"] / gb for x in ok)
        sha = f"{len(ok)}/{len(r['runs'])} ok"
        if bad:
            why = next((x.get("error") or x.get("stderr") or f"exit {x.get('exit')}"
                        for x in r["runs"] if x not in ok), "")
            sha += f" ({str(why).strip()[:60]})"
        wall = summary(x["seconds"] for x in ok) if r["mode"] == "exec" else {}
        rows_out.append([r["mode"], r["label"], fmt_range(mbps, 1, 1),
                         f"{wall['median']:.1f}" if wall.get("n") else "",
                         ratio(med, base.get((r["mode"], "chacha"))),
                         ratio(med, base.get((r["mode"], "aes"))),
                         ratio(med, raw.get(r["system"])) if r["mode"] == "forward" else "",
                         fmt_range(client, 1, 2), fmt_range(server, 1, 2), sha])
    return render_table("2. Throughput", notes,
                        ["mode", "system", "MB/s", "wall s", "×chacha", "×aes", "×raw",
                         "client CPU s/GB",
                         "server CPU s/GB", "sha256"], rows_out)


def udp_table(res: dict[str, Any]) -> str:
    notes = [f"{res['count']} DNS A queries (distinct names) over one UDP socket, at most "
             f"{res['inflight']} unanswered, to a dnsmasq on 127.0.0.1: straight, or through "
             "`ssh3 -forward-udp LPORT/127.0.0.1@DNSPORT -N`; every answer checked; median "
             "[min–max] over runs; OpenSSH cannot forward UDP"]
    rows = []
    for name, rec in res["systems"].items():
        if "error" in rec:
            rows.append([name, "error", "", "", "", rec["error"][:80]])
            continue
        runs = rec["runs"]
        qps = summary(r["per_second"] for r in runs)
        lat = summary(r["median_ms"] for r in runs if r["median_ms"] is not None)
        rows.append([name, fmt_range(qps, 1), f"{lat['median']:.2f}" if lat.get("n") else "",
                     str(sum(r["ok"] for r in runs)), str(sum(r["bad"] for r in runs)),
                     str(sum(r["lost"] for r in runs))])
    return render_table("5. UDP forwarding (DNS)", notes,
                        ["system", "queries/s", "median ms", "ok", "bad", "lost"], rows)


def interactive_table(res: dict[str, Any], systems: list[System]) -> str:
    notes = [f"one byte typed into a local pty, back from a remote `cat` under `stty raw "
             f"-echo` (`-t`; ssh `-tt`); {res['rounds']} round trips after 20 warm-up, "
             "RTT 0 (loopback)",
             "session gone = time from SIGHUP to the client (its terminal closed) until the "
             "server's session processes are gone"]
    stats = {name: summary(v.get("samples", [])) for name, v in res["systems"].items()}
    ossh = next((s.name for s in systems if s.kind == "openssh"), None)
    o = stats.get(ossh or "", {})
    rows = []
    for s in systems:
        if s.name not in res["systems"]:
            continue
        v = res["systems"][s.name]
        st = stats[s.name]
        if "cleanup_wait" in v:
            gone = (f"{v['cleanup_seconds']:.1f} s" if v.get("cleanup_seconds") is not None
                    else f"> {v['cleanup_wait']:g} s")
        else:
            gone = ""
        if not st.get("n"):
            rows.append([s.name, "n/a", "n/a", "", "", "", "", gone,
                         v.get("failure") or ""])
            continue
        rows.append([s.name, f"{st['median'] * 1000:.3f}", f"{st['p99'] * 1000:.3f}",
                     f"{st['min'] * 1000:.3f}", f"{st['max'] * 1000:.3f}",
                     ratio(st["median"], o.get("median")), ratio(st["p99"], o.get("p99")),
                     gone, (v.get("failure") or "")[:60]])
    return render_table("3. Interactive latency", notes,
                        ["system", "median ms", "p99 ms", "min ms", "max ms", "×OSSH med",
                         "×OSSH p99", "session gone", "failure"], rows)


def scale_table(res: dict[str, Any], systems: list[System]) -> str:
    n = res["count"]
    notes = [f"memory of the server with {n} idle conversations (authenticated, no channel); "
             "ssh3/Go: the server process alone; OpenSSH: sum over sshd's tree "
             "(listener + 2 processes per connection)",
             "RSS sums count shared pages once per process; PSS shares them out (the real "
             "total); KB/conv = (PSS with − PSS before) / opened; open s = time to open "
             "them all (ssh3: 16 handshakes at a time; OpenSSH: 8 at a time)"]
    rows = []
    for s in systems:
        idle = res["systems"].get(s.name, {}).get("idle", {})
        if "error" in idle or "before" not in idle:
            rows.append([s.name, "error", idle.get("error", "not run")[:80], "", "", "", "", "",
                         ""])
            continue
        b, d, a = idle["before"], idle["during"], idle["after"]
        opened = max(1, idle["opened"])
        rows.append([
            s.name, f"{idle['opened']}/{idle['failed']}/{idle['alive_at_reading']}",
            f"{b['rss_kb'] / 1024:.1f}", f"{d['rss_kb'] / 1024:.1f}",
            f"{a['rss_kb'] / 1024:.1f}",
            f"{b['pss_kb'] / 1024:.1f} → {d['pss_kb'] / 1024:.1f} → {a['pss_kb'] / 1024:.1f}",
            f"{(d['pss_kb'] - b['pss_kb']) / opened:.0f}", f"{idle['open_seconds']:.1f}",
            idle.get("client", "")])
    t1 = render_table(f"4a. Scale: {n} idle conversations", notes,
                      ["system", "open/fail/alive", "RSS before MB", f"RSS with {n} MB",
                       "RSS after MB", "PSS before→with→after MB", "KB/conv", "open s",
                       "client"], rows)
    notes2 = [f"`<client> host true` back to back for {res['seconds']:g} s; conv/s = "
              "successful runs / elapsed; 2 cores shared by clients and server"]
    rates: list[tuple[str, str, dict[str, Any]]] = []
    for s in systems:
        rec = res["systems"].get(s.name, {})
        for key in ("rate_cli", "rate_library"):
            if key in rec:
                rates.append((s.name, key, rec[key]))
    ossh = next((r for name, key, r in rates
                 if key == "rate_cli" and name == "OpenSSH" and "per_second" in r), None)
    rows2 = []
    for name, _key, r in rates:
        if "per_second" not in r:
            rows2.append([name, "", "error", "", "", "", "", "", r.get("error", "")[:80]])
            continue
        longest = f"{r['max_run_seconds']:.1f}" if "max_run_seconds" in r else ""
        cpu = r.get("server_cpu_ms_per_conv")
        rows2.append([name, r["client"], f"{r['per_second']:.1f}", str(r["ok"]),
                      str(r["failed"]), longest, f"{cpu:.1f}" if cpu is not None else "",
                      ratio(r["per_second"], ossh["per_second"] if ossh else None),
                      "; ".join(e.strip() for e in r.get("errors", []))[:80]])
    t2 = render_table("4b. Scale: new conversations per second", notes2,
                      ["system", "client", "conv/s", "ok", "failed", "longest s",
                       "srv CPU ms/conv", "×OSSH", "errors"], rows2)
    notes3 = [f"{res.get('churn')} short conversations (`true`, library, 4 at a time) one "
              "after the other: server RSS before and after (settled), and server CPU per "
              "conversation (/proc utime+stime of its tree, the sessions' processes "
              "included)"]
    rows3 = []
    for s in systems:
        ch = res["systems"].get(s.name, {}).get("churn")
        if ch is None:
            continue
        if "error" in ch:
            rows3.append([s.name, "error", "", "", "", ch["error"][:80]])
            continue
        rows3.append([s.name, f"{ch['sessions']}/{ch['failed']}",
                      f"{ch['rss_before_kb'] / 1024:.1f}", f"{ch['rss_after_kb'] / 1024:.1f}",
                      f"{(ch['rss_after_kb'] - ch['rss_before_kb']) / 1024:+.1f}",
                      f"{ch['server_cpu_ms_per_conv']:.1f}"])
    t3 = render_table("4c. Scale: after many short conversations", notes3,
                      ["system", "ok/failed", "RSS before MB", "RSS after MB", "Δ MB",
                       "srv CPU ms/conv"], rows3)
    return t1 + "\n\n" + t2 + ("\n\n" + t3 if rows3 else "")


# ---------------------------------------------------------------- environment


def versions() -> dict[str, str]:
    out: dict[str, str] = {"python": platform.python_version(), "kernel": platform.release(),
                           "cpus": str(os.cpu_count())}
    for pkg in ("aioquic", "qh3", "netfilterqueue"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[pkg] = importlib.metadata.version(pkg)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out["openssh"] = subprocess.run(["ssh", "-V"], capture_output=True, text=True,
                                        timeout=10).stderr.strip()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                out["cpu"] = line.split(":", 1)[1].strip()
                break
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="fewer runs, 32 MiB, 50 conversations, 5 s rates (about 2 minutes)")
    ap.add_argument("--only", default=",".join(BENCHES),
                    help=f"comma-separated subset of {','.join(BENCHES)}")
    ap.add_argument("--backends", default="aioquic,qh3", help="our QUIC backends to measure")
    ap.add_argument("--runs", type=int, help="runs per setup/throughput cell "
                    "(default 10 and 3; quick: 3 and 1)")
    ap.add_argument("--size-mib", type=int, help="throughput payload (default 256; quick 32)")
    ap.add_argument("--rtts", default="0,50,100", help="RTTs in ms for setup")
    ap.add_argument("--rounds", type=int, default=500, help="interactive round trips")
    ap.add_argument("--conversations", type=int, help="idle conversations (default 500; "
                    "quick 50)")
    ap.add_argument("--rate-seconds", type=float, help="conversation rate duration "
                    "(default 20; quick 5)")
    ap.add_argument("--churn", type=int, help="short conversations for the RSS-after and "
                    "CPU-per-conversation figures (default 1000; quick 200)")
    ap.add_argument("--udp-queries", type=int, help="DNS queries per udp run (default "
                    "5000; quick 500)")
    ap.add_argument("--udp-inflight", type=int, default=16, help="DNS queries in flight")
    ap.add_argument("--no-openssh", action="store_true", help="skip OpenSSH (no ratios)")
    ap.add_argument("--ref-bin-dir", default=os.environ.get("SSH3_REF_BIN_DIR"),
                    help="reference Go binaries (default $SSH3_REF_BIN_DIR)")
    ap.add_argument("--json", help="where to write the results (default bench/results/)")
    args = ap.parse_args(argv)
    args.only = [b.strip() for b in args.only.split(",") if b.strip()]
    for b in args.only:
        if b not in BENCHES:
            ap.error(f"unknown benchmark {b!r}: choose from {', '.join(BENCHES)}")
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    args.rtts = [float(r) for r in args.rtts.split(",")]
    if 0.0 not in args.rtts:
        args.rtts.insert(0, 0.0)  # the RTT count needs the baseline
    q = args.quick
    args.setup_runs = args.runs or (3 if q else 10)
    args.tp_runs = args.runs or (1 if q else 3)
    args.size = (args.size_mib or (32 if q else 256)) << 20
    args.conversations = args.conversations or (50 if q else 500)
    args.rate_seconds = args.rate_seconds or (5.0 if q else 20.0)
    args.udp_queries = args.udp_queries or (500 if q else 5000)
    args.churn = args.churn or (200 if q else 1000)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    # both unwind into the finally below (everything stopped), never in the middle
    # of starting a child (harness.interrupts_deferred)
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    started = time.time()
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "argv": sys.argv, "versions": versions(),
                               "options": {k: v for k, v in vars(args).items()}}
    tables: list[str] = []
    lab = Lab(Path(tempfile.mkdtemp(prefix="ssh3-bench-")))
    try:
        systems: list[System] = []
        for b in args.backends:
            say(f"starting ssh3-server -quic-backend {b}")
            systems.append(lab.start_ssh3(b))
        if args.ref_bin_dir:
            say("starting the reference Go ssh3-server")
            try:
                systems.append(lab.start_ref(Path(args.ref_bin_dir)))
            except (BenchError, OSError, subprocess.SubprocessError) as exc:
                results["ref_error"] = str(exc)
                say(f"reference server not measured: {exc}")
        if not args.no_openssh:
            say("starting sshd")
            systems.append(lab.start_sshd())
        results["systems"] = [s.name for s in systems]

        def emit(table: str) -> None:
            tables.append(table)
            print(table + "\n", flush=True)

        if "setup" in args.only:
            res = bench_setup(lab, systems, args.rtts, args.setup_runs, say)
            results["setup"] = res
            emit(setup_table(res, systems))
        if "throughput" in args.only:
            res = bench_throughput(lab, systems, args.size, args.tp_runs, say)
            results["throughput"] = res
            emit(throughput_table(res))
        if "udp" in args.only:
            res = bench_udp(lab, systems, args.udp_queries, args.udp_inflight,
                            args.tp_runs, say)
            results["udp"] = res
            emit(udp_table(res))
        # interactive last: a session its SIGHUP leaves behind must not disturb the
        # others (an ssh3 server keeps it until the QUIC idle timeout)
        if "scale" in args.only:
            res = bench_scale(lab, systems, args.conversations, args.rate_seconds, say,
                              args.churn)
            results["scale"] = res
            emit(scale_table(res, systems))
        if "interactive" in args.only:
            res = {"rounds": args.rounds, "systems": {}}
            for s in systems:
                if s.kind == "ref":
                    res["systems"][s.name] = {"failure": "not measured (Go client pty "
                                              "flags differ)"}
                    continue
                say(f"interactive: {s.name}, {args.rounds} round trips")
                res["systems"][s.name] = echo_latency(s, args.rounds,
                                                      cleanup_wait=5.0 if args.quick else 40.0)
            results["interactive"] = res
            emit(interactive_table(res, systems))
    except KeyboardInterrupt:
        say("interrupted: stopping everything")
        results["interrupted"] = True
    except BenchError as exc:
        say(f"cannot run: {exc}")
        results["error"] = str(exc)
    finally:
        out = Path(args.json) if args.json else \
            BENCH_DIR / "results" / time.strftime("%Y%m%d-%H%M%S.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        # the servers' logs explain failures after the fact; the temp dir goes away
        lab.close(keep_logs=out.with_suffix(".logs"))
        remove_tagged_rules(f"{RULE_TAG}{os.getpid()}-")  # only our delays' rules
        results["seconds"] = time.time() - started
        results["tables"] = tables
        out.write_text(json.dumps(results, indent=1, default=str) + "\n")
        say(f"results: {out} ({results['seconds']:.0f} s)")
    return 130 if results.get("interrupted") else 1 if results.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
