"""`manifoldadv info`: versions, the extension, which backend each op uses, and devices."""

from __future__ import annotations

import os

import torch
from rich.table import Table

from ..runtime import console
from .. import ops
from ..attacks import fused
from ..runtime import versions
from ._app import app
from ._options import Run, shared


def collect() -> dict:
    devices = [{"type": "cpu", "threads": torch.get_num_threads()}]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devices.append({"type": "cuda", "index": i, "name": p.name, "memory_gib": round(p.total_memory / 2**30, 1)})
    return {
        "versions": versions(),
        "extension": {
            "loaded": ops.extension_loaded(),
            "error": ops.EXTENSION_ERROR,
            "required": ops.require_extension(),
            "built_with_cuda": ops.backends(("cuda",))["pgd_step"]["cuda"] == "compiled",
        },
        "backends": ops.backends(),
        # which CUDA l2 pgd_step kernel runs (csrc/cuda/pgd_step.cu): the two-pass one, or registers
        "cuda_l2_kernel": os.environ.get("MANIFOLDADV_CUDA_L2") or "block",
        "cpu_covariance_blas": ops.cpu_blas(),
        "attack_engine": fused.status(),
        "devices": devices,
        "cuda_available": torch.cuda.is_available(),
    }


@app.command()
@shared()
def info(run: Run) -> None:
    """Versions, the compiled extension, each op's backend per device, and the devices."""
    dev = run.start()
    data = collect()
    data["selected_device"] = str(dev)
    if run.json_out:
        console.emit_json(data)
        return
    v = data["versions"]
    console.out.print(f"manifoldadv {v['manifoldadv']}  torch {v['torch']} (cuda {v['torch_cuda']})  "
                      f"numpy {v['numpy']}  python {v['python']}")
    ext = data["extension"]
    console.out.print(f"extension: {'loaded' if ext['loaded'] else 'MISSING: ' + str(ext['error'])}")
    table = Table(title="op backends")
    table.add_column("op")
    for dev in ("cpu", "cuda"):
        table.add_column(dev)
    for op, per_dev in data["backends"].items():
        table.add_row(op, per_dev["cpu"], per_dev["cuda"])
    console.out.print(table)
    if ext["built_with_cuda"]:
        console.out.print(f"CUDA l2 pgd_step kernel: {data['cuda_l2_kernel']} (MANIFOLDADV_CUDA_L2)")
    console.out.print(f"CPU covariance products: {data['cpu_covariance_blas']}")
    eng = data["attack_engine"]
    if eng["attacks"]:
        console.out.print(f"fused attack engine (CPU): {', '.join(eng['attacks'])} on {eng['models']}; "
                          f"{eng['env']}=0 turns it off")
    else:
        why = "not built" if not eng["compiled"] else f"off ({eng['env']}=0)"
        console.out.print(f"fused attack engine (CPU): {why}; attacks run eagerly")
    for d in data["devices"]:
        console.out.print("device: " + ", ".join(f"{k}={val}" for k, val in d.items()))
