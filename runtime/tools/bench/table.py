"""`lineside bench` as a table for people (rich): the student per backend, one line per section, the targets."""
from __future__ import annotations

from runtime.tools.bench.sections import FULL_TEACHER_SIZE, PARTS
from runtime.report import fmt_number


def _section_summary(name: str, r: dict) -> str:
    """One line of the figures people look for in a section."""
    if r.get("status") != "ok":
        return str(r.get("reason") or r.get("error") or "")[:120]
    if name == "teacher":
        return " · ".join(f"{p} {x['size']} px: {x['latency_s_per_image'] * 1e3:.1f} ms/image ({r[p].get('device')})"
                          for p in ("tiny", "sd15") if p in r for x in r[p].get("results", []))
    if name == "student":
        at = r.get(f"at_{FULL_TEACHER_SIZE}")
        return f"input {r['input'][-1]} px, {r['threads']} thread(s)" + (
            f"; at {FULL_TEACHER_SIZE} px: " + ", ".join(f"{k} {fmt_number(v.get('median_ms'), 2)} ms" for k, v in
                                                         (at.get("backends") or {}).items() if "median_ms" in v)
            if at else "")
    if name == "kernels":
        return (f"knn/matmul {fmt_number(r.get('knn_vs_matmul'), 3)}, matmul {fmt_number((r.get('cpu') or {}).get('matmul', {}).get('gflops'), 1)}"
                f" GFLOP/s; impl {r.get('implementations')}")
    if name == "daemon":
        raw, d = r.get("raw") or {}, r.get("daemon") or {}
        return (f"{r.get('backend')}: raw p50 {fmt_number(raw.get('p50_ms'), 2)} ms; daemon e2e p50 {fmt_number(d.get('e2e_p50_ms'), 2)} / "
                f"p99 {fmt_number(d.get('e2e_p99_ms'), 2)} ms, sustained {fmt_number(d.get('sustained_rate_hz'), 0)} Hz "
                f"({fmt_number(r.get('sustained_ratio'), 2)} of raw), overhead p50 {fmt_number(r.get('overhead_p50_ms'), 2)} ms"
                + _scaled_summary(r))
    if name == "server":
        return f"{r.get('model')}: " + " · ".join(
            f"{x['clients']} client(s) {x['throughput_rps']:.0f} req/s p50 {x['latency_ms']['p50']:.0f} ms"
            for x in r.get("results", []))
    return ""


def _scaled_summary(r: dict) -> str:
    sc, un = r.get("daemon_scaled"), r.get("raw_unpinned") or {}
    if not sc:
        return ""
    return (f"; {sc['workers']} workers {fmt_number(sc.get('sustained_rate_hz'), 0)} Hz ({fmt_number(sc.get('ratio_vs_raw'), 2)} of raw, "
            f"{fmt_number(sc.get('ratio_vs_raw_unpinned'), 2)} of raw with default BLAS/OpenCV threads "
            f"{fmt_number(un.get('rate_hz'), 0)} Hz)")


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console()
    m = report["machine"]
    c.print(f"[bold]lineside bench[/] on {m['node']} ({m['cpus']} CPUs, {m['arch']}), {report['wall_s']:.0f} s")
    st = report.get("student")
    if st and st.get("status") == "ok":
        t = Table(title=f"student, input {st['input']}")
        for col in ("backend", "model", "p50 ms", "p90 ms", "size MB"):
            t.add_column(col)
        for name, per in st["results"].items():
            if per.get("status") == "skipped":
                t.add_row(name, "—", "skipped", per["reason"][:60], "")
                continue
            for role, r in per.items():
                if r.get("status") == "ok":
                    t.add_row(r["backend"], role, f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['bytes'] / 1e6:.2f}")
                else:
                    t.add_row(name, role, r.get("status", "?"), (r.get("reason") or r.get("error") or "")[:60], "")
        c.print(t)
    t = Table(title="sections")
    t.add_column("section")
    t.add_column("status")
    t.add_column("wall s")
    t.add_column("figures")
    for name in PARTS[1:]:
        r = report.get(name)
        if not r:
            continue
        t.add_row(name, r.get("status", "?"), f"{r.get('wall_s', 0):.1f}", _section_summary(name, r))
    c.print(t)
    t = Table(title="targets")
    for col in ("target", "limit", "measured", "pass"):
        t.add_column(col)
    for r in report["targets"]:
        v = r["measured"]
        t.add_row(r["what"], r["limit"], "—" if v is None else f"{v:.3g}",
                  {True: "[green]pass[/]", False: "[red]FAIL[/]", None: f"[dim]n/a: {r.get('why', '')}[/]"}[r["pass"]])
    c.print(t)
