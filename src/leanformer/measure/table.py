"""Cost records as a table, with the same columns in every lesson: ``cost_table`` builds the
pandas DataFrame, ``show_costs`` displays it formatted for reading, then the machine, how the
timings were taken and the notes on what could not be measured."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .cost import Cost

if TYPE_CHECKING:
    import pandas as pd


def cost_table(costs: list[Cost], baseline: str | None = None) -> pd.DataFrame:
    """The costs as a pandas DataFrame, one row per model, with the same columns in every
    lesson. With ``baseline`` (a model's name), add each model's throughput relative to it."""
    import pandas as pd

    def mb(n: int | None) -> float | None:
        return None if n is None else n / 1e6

    rows: list[dict[str, Any]] = []
    for c in costs:
        rows.append({
            "model": c.name,
            "test accuracy (%)": None if c.test_acc is None else 100 * c.test_acc,
            "parameters": c.parameters,
            "file (MB)": mb(c.file_bytes),
            "format": c.file_format,
            "MFLOPs / image": None if c.flops is None else c.flops / 1e6,
            "latency, batch 1 (ms)": c.latency_ms.format(2) if c.latency_ms else None,
            f"throughput, batch {c.batch_size} (img/s)": c.throughput.format(0) if c.throughput else None,
            "precision": c.precision,
            "training (min)": None if c.train_time_s is None else c.train_time_s / 60,
            "epochs": c.train_epochs,
            "images seen": c.train_images_seen,
        })
    df = pd.DataFrame(rows).set_index("model")
    if baseline is not None:
        base = next((c.throughput for c in costs if c.name == baseline), None)
        if base is None:
            raise ValueError(f"no model named {baseline!r} with a throughput to compare with")
        df[f"throughput vs {baseline}"] = [c.throughput.median / base.median if c.throughput else None
                                          for c in costs]
    return df


def show_costs(costs: list[Cost], baseline: str | None = None) -> pd.DataFrame:
    """Display ``cost_table`` formatted for reading, then the machine and the notes."""
    from IPython import get_ipython
    from IPython.display import display

    df = cost_table(costs, baseline)
    fmt = {"test accuracy (%)": "{:.2f}", "parameters": "{:,.0f}", "file (MB)": "{:.2f}",
           "MFLOPs / image": "{:.1f}", "training (min)": "{:.1f}", "epochs": "{:g}",
           "images seen": "{:,.0f}", f"throughput vs {baseline}": "{:.2f}×"}
    styled = df.style.format({k: v for k, v in fmt.items() if k in df.columns}, na_rep="—")
    if get_ipython() is None:  # a terminal (python -m leanformer costs): the table as text
        print(styled.to_string(delimiter="  "))
    else:
        display(styled)
    c = costs[0]
    if c.latency_ms is not None and c.throughput is not None:
        print(f"Timed side by side on {c.machine}; latency and throughput: median (min–max) over "
              f"{c.latency_ms.n} single inputs and {c.throughput.n} batches of {c.batch_size} per model.")
    else:  # a record read back without timings
        print(f"Measured on {c.machine}; not timed.")
    # a note that several models share is printed once, with their names
    notes: dict[tuple[str, str], list[str]] = {}
    for c in costs:
        for column, why in c.notes.items():
            notes.setdefault((column, why), []).append(c.name)
    for (column, why), names in notes.items():
        who = "every model" if len(names) == len(costs) > 1 else "; ".join(names)
        print(f"{who}, {column}: {why}")
    return df
