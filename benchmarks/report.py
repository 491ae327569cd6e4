"""Figures, their goals (from issue 4) and the report: a markdown table on stdout plus
JSON and markdown files in benchmarks/results/."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TIMES = "\u00d7"  # the multiplication sign of "0.9x"


@dataclass
class Goal:
    """`kind` "ratio": stormount / reference compared with `value`; "peer": stormount /
    rclone (not judged without rclone); "abs": stormount itself compared with `value`;
    "works": met when the figure was measured at all."""
    kind: str
    op: str  # ">=" or "<="
    value: float
    text: str

    def met(self, row: Row) -> bool | None:
        if self.kind == "works":
            return None if row.stormount is None and row.ok else row.ok
        if row.stormount is None:
            return None
        x = row.ratio() if self.kind == "ratio" else \
            row.peer_ratio() if self.kind == "peer" else row.stormount
        if x is None:
            return None
        return x >= self.value if self.op == ">=" else x <= self.value


@dataclass
class Row:
    key: str
    figure: str
    unit: str  # "MiB/s", "IOPS", "s", "ms", "MiB"
    reference_label: str = ""
    goal: Goal | None = None
    stormount: float | None = None
    reference: float | None = None
    rclone: float | None = None
    ok: bool = True  # for "works" goals: the operation completed
    notes: list[str] = field(default_factory=list)

    def ratio(self) -> float | None:
        if self.stormount is None or not self.reference:
            return None
        return self.stormount / self.reference

    def rclone_ratio(self) -> float | None:
        if self.rclone is None or not self.reference:
            return None
        return self.rclone / self.reference

    def peer_ratio(self) -> float | None:
        if self.stormount is None or not self.rclone:
            return None
        return self.stormount / self.rclone

    def note(self, text: str) -> None:
        self.notes.append(text)

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        d["ratio"] = self.ratio()
        d["rclone_ratio"] = self.rclone_ratio()
        d["peer_ratio"] = self.peer_ratio()
        d["met"] = self.goal.met(self) if self.goal else None
        return d


def ratio_goal(op: str, value: float, what: str, quote: str = "", kind: str = "ratio"
               ) -> Goal:
    """E.g. ratio_goal(">=", 0.9, "direct"): stormount at least 0.9 times the reference;
    `quote` adds the issue's figures behind the goal; kind="peer" compares with rclone."""
    text = f"{'≥' if op == '>=' else '≤'} {value:g}{TIMES} {what}"
    text += f" ({quote})" if quote else ""
    return Goal(kind, op, value, text)


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "IOPS":
        return f"{value:,.0f} IOPS"
    if unit == "s":
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    if unit == "ms":
        return f"{value:.2f} ms"
    return f"{value:,.1f} {unit}"


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "—"
    return f"{r:.3f}{TIMES}" if r < 0.1 else f"{r:.2f}{TIMES}"


def table(rows: list[Row], with_rclone: bool) -> str:
    head = ["Figure", "stormount", "Reference", "Ratio", "Goal", "Met?"]
    if with_rclone:
        head.append("rclone (peer)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        ref = fmt(row.reference, row.unit)
        if row.reference_label:
            ref = f"{ref} ({row.reference_label})" if row.reference is not None \
                else row.reference_label
        met = row.goal.met(row) if row.goal else None
        cells = [row.figure, fmt(row.stormount, row.unit), ref, fmt_ratio(row.ratio()),
                 row.goal.text if row.goal else "report only",
                 {True: "yes", False: "**no**", None: "—"}[met]]
        if with_rclone:
            peer = fmt(row.rclone, row.unit)
            if row.rclone is not None and row.rclone_ratio() is not None:
                peer += f" ({fmt_ratio(row.rclone_ratio())})"
            cells.append(peer)
        if row.notes:
            cells[0] += "<br>*" + "; ".join(row.notes) + "*"
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def render(rows: list[Row], meta: dict[str, object], notes: list[str]) -> str:
    with_rclone = any(r.rclone is not None for r in rows)
    out = [f"# stormount benchmark, {meta['started']}", "",
           f"Parameters: {meta['parameters']}; took {meta['duration_s']:.0f} s.", "",
           table(rows, with_rclone), ""]
    if notes:
        out += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out)


def write(rows: list[Row], meta: dict[str, object], notes: list[str]) -> tuple[str, list[Path]]:
    """The markdown report; writes it and the JSON to results/ (timestamped and latest)."""
    md = render(rows, meta, notes)
    data = {**meta, "notes": notes, "figures": [r.to_json() for r in rows]}
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    paths = []
    for name in (f"bench-{stamp}", "latest"):
        for ext, text in (("md", md), ("json", json.dumps(data, indent=2) + "\n")):
            p = RESULTS / f"{name}.{ext}"
            p.write_text(text)
            paths.append(p)
    return md, paths[:2]
