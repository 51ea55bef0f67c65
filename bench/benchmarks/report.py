"""Each driver's rows as text, and the targets they are held to: make bench's tables (terminal
and Markdown, from one description of each table) and gpu-check's summary lines."""

from __future__ import annotations

import sys

from .common import OLD_LOOP_BATCHES, fmt_shape, last_line

# ------------------------------------------------------------------------------ make bench

# The CPU kernels' speed targets.
TARGETS = {
    "linf/l2 >= 5x eager at 1024x3x32x32": ("speedup_eager", ("linf", "l2"), (1024, 3, 32, 32), ">=", 5.0),
    "linf/l2 >= 2x eager at 128x1x28x28": ("speedup_eager", ("linf", "l2"), (128, 1, 28, 28), ">=", 2.0),
    "linf/l2 within 1.5x of the byte limit (in place, every size)": ("inplace_over_limit", ("linf", "l2"), None, "<=", 1.5),
    "l1 >= 10x the batched torch reference (every size)": ("speedup_eager", ("l1",), None, ">=", 10.0),
}


def cpu_targets(res):
    out = []
    for name, (key, norms, shape, op, bound) in TARGETS.items():
        vals = [r[key] for r in res["pgd_step"] if r["norm"] in norms and (shape is None or tuple(r["shape"]) == shape)]
        if not vals:
            continue
        worst = min(vals) if op == ">=" else max(vals)
        met = worst >= bound if op == ">=" else worst <= bound
        out.append({"target": name, "worst": worst, "met": met})
    for r in res["covariance"]:
        out.append({"target": f"covariance d={r['d']}: >= 1.2x faster than the np.cov loop",
                    "worst": r["np_cov_over_fused"], "met": r["np_cov_over_fused"] >= 1.2})
        out.append({"target": f"covariance d={r['d']}: within 1.3x of numpy X.T@X",
                    "worst": r["fused_over_limit"], "met": r["fused_over_limit"] <= 1.3})
        out.append({"target": f"covariance d={r['d']}: float64-accurate (rel err <= 1e-10 vs np.cov)",
                    "worst": r["max_rel_err_vs_np_cov"], "met": r["max_rel_err_vs_np_cov"] <= 1e-10})
    for r in res.get("train", []):
        out.append({"target": f"training loop {r['model']} PGD-{r['attack_steps']}: new >= 0.95x old throughput",
                    "worst": r["new_over_old"], "met": r["new_over_old"] >= 0.95})
        out.append({"target": f"training loop {r['model']}: same weights as the old loop",
                    "worst": float(r["identical_weights"]), "met": r["identical_weights"]})
    for r in res.get("attack", []):
        out.append({"target": f"PGD-{r['steps']} LeNet5 batch {r['batch']}: fused >= 2.5x the eager path",
                    "worst": r["fused_over_eager"], "met": r["fused_over_eager"] >= 2.5})
        if r.get("fused_over_torchattacks") is not None:
            out.append({"target": f"PGD-{r['steps']} LeNet5 batch {r['batch']}: fused >= 2x torchattacks' PGD",
                        "worst": r["fused_over_torchattacks"], "met": r["fused_over_torchattacks"] >= 2.0})
    for r in res["pgd_step"]:
        if r["norm"] == "l1":
            out.append({"target": f"l1 exact to 1e-6 at {fmt_shape(r['shape'])}",
                        "worst": r["max_abs_err_vs_reference"], "met": r["max_abs_err_vs_reference"] <= 1e-6})
    return out


def _pgd_cells(r, markdown):
    ms = r["ms"]
    slow = "{:.3f}" if markdown else "{:.2f}"  # the terminal shows eager and compiled ms to 2 decimals
    return [r["norm"], fmt_shape(r["shape"]), f"{ms['fused']:.3f}", f"{ms['inplace']:.3f}", slow.format(ms["eager"]),
            slow.format(ms["compiled"]) if "compiled" in ms else "n/a", f"{ms['limit']:.3f}",
            f"{r['speedup_eager']:.1f}", f"{r['speedup_compiled']:.1f}" if r["speedup_compiled"] else "n/a",
            f"{r['fused_over_limit']:.2f}", f"{r['inplace_over_limit']:.2f}"]


def _threads_cells(r, markdown):
    return [r["norm"], str(r["threads"]), ", ".join(f"{b:.3f}" for b in r["busiest_thread_cpu_s"]),
            f"{r['wall_s']:.3f}", f"{r['speedup_vs_1_thread']:.2f}"]


def _cov_cells(r, markdown):
    s = r["s"]
    return [str(r["d"]), str(r["rows"]), f"{s['fused']:.3f}", f"{s['np_cov_loop']:.3f}", f"{s['XtX']:.3f}",
            f"{r['np_cov_over_fused']:.2f}", f"{r['fused_over_limit']:.2f}", f"{r['max_rel_err_vs_np_cov']:.1e}"]


def _train_cells(r, markdown):
    ips = r["images_per_s"]
    return [r["model"], str(r["attack_steps"]), str(r["images"]), str(r["augment"]), f"{ips['old']:.1f}",
            f"{ips['new']:.1f}", f"{r['new_over_old']:.3f}", str(r["identical_weights"])]


def _attack_cells(r, markdown):
    ips = r["images_per_s"]
    ta = ips.get("torchattacks")
    return [str(r["batch"]), f"{ips['fused']:.0f}", f"{ips['eager']:.0f}", f"{ta:.0f}" if ta else "n/a",
            f"{r['fused_over_eager']:.2f}", f"{r['fused_over_torchattacks']:.2f}" if ta else "n/a",
            f"{r['fused_gflops']:.1f}", f"{100 * r['fraction_of_peak']:.0f}% of {r['peak_gflops']:.0f}"]


def _train_engine_cells(r, markdown):
    ips, ep = r["images_per_s"], r["epoch_s"]
    return [str(r["attack_steps"]), f"{ips['eager']:.0f}", f"{ips['fused']:.0f}", f"{ep['eager']:.0f}",
            f"{ep['fused']:.0f}", f"{r['fused_over_eager']:.2f}"]


CPU_TABLES = [  # (results key, terminal title, terminal columns, Markdown columns, cells(row, markdown))
    ("pgd_step", "pgd_step (ms per call, median; ratios within this run)",
     ["norm", "shape", "fused", "in place", "eager", "compiled", "limit", "x eager", "x compiled", "fused/limit",
      "in-place/limit"],
     ["norm", "shape", "fused ms", "in-place ms", "eager ms", "compiled ms", "limit ms", "x eager", "x compiled",
      "fused/limit", "in-place/limit"], _pgd_cells),
    ("threads", "threading (largest size)",
     ["norm", "threads", "CPU s of the busiest threads", "wall s", "x vs 1 thread"],
     ["norm", "threads", "CPU s of the busiest threads", "wall s", "x vs 1 thread"], _threads_cells),
    ("covariance", "per-class covariance, 10 classes (s per call, median)",
     ["d", "rows", "fused", "np.cov loop", "X.T@X", "np.cov/fused", "fused/limit", "rel err"],
     ["d", "rows", "fused s", "np.cov loop s", "X.T@X s", "np.cov/fused", "fused/limit", "max rel err"], _cov_cells),
    ("train", "adversarial training loop, batch 128 (images/s, median; ratios within this run)",
     ["model", "PGD steps", "images", "augment", "old loop", "new loop", "new/old", "same weights"],
     ["model", "PGD steps", "images", "augment", "old loop images/s", "new loop images/s", "new/old", "same weights"],
     _train_cells),
    ("attack", "PGD-40 attack on LeNet5, MNIST shape (images/s, median; ratios within this run)",
     ["batch", "fused", "eager", "torchattacks", "fused/eager", "fused/torchattacks", "fused GFLOP/s", "of peak"],
     ["batch", "fused images/s", "eager images/s", "torchattacks images/s", "fused/eager", "fused/torchattacks",
      "fused GFLOP/s", "of fp32 peak"], _attack_cells),
    ("train_engine", "MNIST PGD-adv training, LeNet5, batch 128: engine off (eager) and on",
     ["PGD steps", "eager images/s", "fused images/s", "eager s/epoch", "fused s/epoch", "fused/eager"],
     ["PGD steps", "eager images/s", "fused images/s", "eager s/epoch (60k)", "fused s/epoch (60k)", "fused/eager"],
     _train_engine_cells),
]


def _loadavg(v):
    return tuple(round(x, 2) for x in v)


def print_tables(res):
    from rich.console import Console
    from rich.table import Table

    con = Console(width=None if sys.stdout.isatty() else 150)
    m = res["machine"]
    con.print(f"[bold]manifoldadv kernels[/] on {m['cpu_model']} ({m['logical_cpus']} CPUs, "
              f"{m['torch_threads']} torch threads, kernels: {m['kernel_isa']}), torch {m['torch']}, "
              f"numpy {m['numpy']}; {res['clock']} clock; load average at start {_loadavg(m['loadavg_start'])}")
    for key, title, columns, _, cells in CPU_TABLES:
        if res.get(key):
            t = Table(title=title)
            for col in columns:
                t.add_column(col, justify="right")
            for r in res[key]:
                t.add_row(*cells(r, False))
            con.print(t)
        if key == "pgd_step":
            for n in sorted({r["compiled_note"] for r in res["pgd_step"] if r["compiled_note"]}):
                con.print(f"  compiled: {n}")
    t = Table(title="targets")
    t.add_column("target")
    t.add_column("worst", justify="right")
    t.add_column("met")
    for r in res["targets"]:
        t.add_row(r["target"], f"{r['worst']:.3g}", "[green]yes[/]" if r["met"] else "[red]NO[/]")
    con.print(t)
    con.print(f"load average at end {_loadavg(res['loadavg_end'])}; total {res['seconds']:.0f} s")


def markdown(res):
    """The results as Markdown tables (for bench/RESULTS.md)."""
    m = res["machine"]
    out = [f"Machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs, {m['torch_threads']} torch threads, "
           f"kernel table `{m['kernel_isa']}` (torch capability {m['torch_cpu_capability']}); torch {m['torch']}, "
           f"numpy {m['numpy']}, scipy {m['scipy']}, Python {m['python']}. Clock: {res['clock']}. "
           f"Load average {_loadavg(m['loadavg_start'])} at start, {_loadavg(res['loadavg_end'])} at end. "
           f"Command: `{res['command']}` ({res['date']}).", ""]
    for key, _, _, columns, cells in CPU_TABLES:
        if res.get(key):
            out += md_table(columns, [cells(r, True) for r in res[key]])
    out += md_table(["target", "worst", "met"],
                    [[t["target"], f"{t['worst']:.3g}", "yes" if t["met"] else "**no**"] for t in res["targets"]])
    return "\n".join(out).rstrip("\n")


def md_table(header, rows) -> list[str]:
    """A Markdown table (and a blank line after it)."""
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows] + [""])


# ------------------------------------------------------------------------------ gpu-check


def gpu_table(res) -> str:
    lines = [f"GPU check: {res['env'].get('gpu', 'no GPU')} ({res['env'].get('driver')}), torch {res['env']['torch']} "
             f"CUDA {res['env']['torch_cuda']}, commit {res['env'].get('commit')}, {res['seconds']:.0f} s"]
    for k in ("build", "tests", "suite"):
        if k in res:
            lines.append(f"  {k:8s} rc {res[k]['rc']} in {res[k]['seconds']} s  {last_line(res[k]['tail'])}")
            lines += [f"           failed: {f}" for f in res[k].get("failed", [])]
    for r in res.get("pgd_step", []):
        lines.append(f"  pgd_step {r['norm']:4s} {r.get('variant') or '':9s} {fmt_shape(r['shape']):>14s}  {r['ms']:8.3f} ms  in-place "
                     f"{r['inplace_ms']:8.3f} ms  {r['gbps']:6.0f} GB/s  copy {r['copy_gbps']:5.0f} GB/s  "
                     f"{r['of_copy']:.2f} of copy (in place {r['inplace_of_copy']:.2f})  err {r['max_abs_err']:.1e}")
    for r in res.get("class_cov", []):
        lines.append(f"  class_cov d={r['d']:5d} rows {r['rows']}  fused {r['fused_s'] * 1e3:8.1f} ms  "
                     f"X.T@X f64 {r['xtx_s'] * 1e3:8.1f} ms  {r['fused_over_xtx']:.2f}x  rel err {r['max_rel_err']:.1e}")
    base = {}
    for r in res.get("train", []):
        what = (f"  train {r['model']:8s} PGD-{r['attack_steps']:<3d} {r['loop']} loop {r['precision']} "
                f"compile={r['compile']!s:5s} graphs={r.get('attack_graphs', False)!s:5s}")
        if "epoch_s" not in r:
            lines.append(f"{what}  {r.get('error') or r.get('skipped')}")
            continue
        if r["loop"] == "old":
            base[r["model"]] = r["images_per_s"]
        vs = ""
        if r["loop"] == "new" and r["model"] in base and "window_images_per_s" in r:
            vs = f"  x{r['window_images_per_s'] / base[r['model']]:.2f} the old loop over its {OLD_LOOP_BATCHES} batches"
        warm = f"  (warm-up {r['warmup_s']:.1f} s)" if "warmup_s" in r else ""
        lines.append(f"{what}  {r['epoch_s']:7.1f} s/epoch  {r['images_per_s']:8.0f} images/s{vs}{warm}")
    for r in res.get("dist", []):
        what = r.get("skipped") or r.get("error") or (f"{r['epoch_s']:.1f} s/epoch ({r['wall_s']:.0f} s wall)"
                                                      + (f", weights {r['max_rel_weight_diff']:.1e} rel from 1 process"
                                                         if "max_rel_weight_diff" in r else ""))
        lines.append(f"  dist  {r['processes']} process(es) {r.get('backend') or '':5s} {what}")
    for r in res.get("steps", []):
        what = r.get("error") or r.get("skipped") or (f"{r['ms']:.3f} ms/step (first {r['first_call_s']:.1f} s, "
                                                      f"zero grads {r['zero_grad_fraction']:.4f})")
        lines.append(f"  step {r['model']:8s} {r['precision']} compile={r['compile']!s:15s} {what}")
    for n in res.get("skipped", []):
        lines.append(f"  skipped: {n}")
    for name, worst, met in gpu_targets(res):
        lines.append(f"  target {'met' if met else 'MISSED'}: {name} (worst {worst:.3g})")
    return "\n".join(lines)


def gpu_targets(res) -> list:
    """(target, worst value, met) for the issues' GPU targets that this run measured."""
    out = []
    big = [r for r in res.get("pgd_step", []) if r["norm"] in ("linf", "l2") and r["mb_per_tensor"] >= 100]
    for l2 in ("block", "registers"):  # linf with each l2 kernel
        rows = [r for r in big if r.get("variant", "block") in (None, l2)]
        if any(r["norm"] == "l2" for r in rows):
            worst = min(min(r["of_copy"], r["inplace_of_copy"]) for r in rows)
            out.append((f"pgd_step linf/l2 ({l2}) >= 0.8 of the copy bandwidth at >= 100 MB", worst, worst >= 0.8))
    rows = [r for r in res.get("train", []) if "epoch_s" in r and r["model"] == "resnet32"]
    old = next((r["epoch_s"] for r in rows if r["loop"] == "old"), None)
    fast = [r for r in rows if r["loop"] == "new" and r["precision"] == "bf16" and (r["compile"] or r.get("attack_graphs"))]
    if old and fast:  # steady state: the compiled rows' warm-up (compilation, capture) is reported apart
        best = min(fast, key=lambda r: r["epoch_s"])
        how = " + ".join(w for w, on in (("compile", best["compile"]), ("attack graphs", best.get("attack_graphs"))) if on)
        out.append((f"ResNet32 PGD-10 epoch, bf16 + {how} >= 3x the old fp32 eager loop", old / best["epoch_s"],
                    old / best["epoch_s"] >= 3))
    return out
