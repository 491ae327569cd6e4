"""Figures, their goals (from issues 4 and 17) and the report: a markdown table on stdout plus
JSON and markdown files in benchmarks/results/."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TIMES = "\u00d7"  # the multiplication sign of "0.9x"


# the peer columns, in this order; a column shows when any row has its figure
PEERS = ("rclone", "s3fs")


@dataclass
class Goal:
    """`kind` "ratio": stormount / reference compared with `value`; "peer": stormount /
    the peer named by `peer` (not judged without it); "abs": stormount itself compared
    with `value`; "works": met when the figure was measured and `Row.ok` holds (e.g. a
    copy that must be exact)."""
    kind: str
    op: str  # ">=" or "<="
    value: float
    text: str
    peer: str = "rclone"
    parts: tuple[Goal, ...] = ()  # kind "all": met when every part is

    def met(self, row: Row) -> bool | None:
        if self.kind == "all":
            results = [part.met(row) for part in self.parts]
            return False if False in results else None if None in results else True
        if self.kind == "works":
            return None if row.stormount is None and row.ok else row.ok
        if row.stormount is None:
            return None
        if row.failures:  # e.g. fast but with wrong attributes: not met, however fast
            return False
        x = row.ratio() if self.kind == "ratio" else \
            row.peer_ratio(self.peer) if self.kind == "peer" else row.stormount
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
    peers: dict[str, float] = field(default_factory=dict)  # e.g. "rclone" -> its figure
    ok: bool = True  # for "works" goals: the operation completed (or came out exact)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # stormount's result was wrong

    def get(self, kind: str) -> float | None:
        """The figure of "stormount" or of a peer ("rclone", "s3fs")."""
        return self.stormount if kind == "stormount" else self.peers.get(kind)

    def set(self, kind: str, value: float | None) -> None:
        if kind == "stormount":
            self.stormount = value
        elif value is not None:
            self.peers[kind] = value

    def ratio(self) -> float | None:
        if self.stormount is None or not self.reference:
            return None
        return self.stormount / self.reference

    def peer_ref_ratio(self, peer: str) -> float | None:
        """A peer's figure over the reference (shown beside it, as Ratio is)."""
        if self.peers.get(peer) is None or not self.reference:
            return None
        return self.peers[peer] / self.reference

    def peer_ratio(self, peer: str = "rclone") -> float | None:
        """stormount over a peer: what a "peer" goal judges."""
        if self.stormount is None or not self.peers.get(peer):
            return None
        return self.stormount / self.peers[peer]

    def note(self, text: str) -> None:
        self.notes.append(text)

    def fail(self, text: str) -> None:
        """stormount's figure came with a wrong result: the goal is not met whatever
        the figure, and the table says why in bold."""
        self.failures.append(text)
        self.ok = False

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        d["ratio"] = self.ratio()
        d["peer_ref_ratios"] = {p: self.peer_ref_ratio(p) for p in self.peers}
        d["met"] = self.goal.met(self) if self.goal else None
        return d


def all_of(*parts: Goal) -> Goal:
    """Met when every one of `parts` is (e.g. an absolute figure and a peer ratio)."""
    return Goal("all", ">=", 0, " and ".join(part.text for part in parts), parts=parts)


def ratio_goal(op: str, value: float, what: str, quote: str = "", kind: str = "ratio",
               peer: str = "rclone") -> Goal:
    """E.g. ratio_goal(">=", 0.9, "direct"): stormount at least 0.9 times the reference;
    `quote` adds the issue's figures behind the goal; kind="peer" compares with `peer`."""
    text = f"{'≥' if op == '>=' else '≤'} {value:g}{TIMES} {what}"
    text += f" ({quote})" if quote else ""
    return Goal(kind, op, value, text, peer)


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "IOPS":
        return f"{value:,.0f} IOPS"
    if unit == "s":
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "MiB" and value < 1:  # e.g. the bytes a small change sends
        return f"{value * 1024:,.1f} KiB"
    return f"{value:,.1f} {unit}"


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "—"
    return f"{r:.3f}{TIMES}" if r < 0.1 else f"{r:.2f}{TIMES}"


def table(rows: list[Row], peers: list[str]) -> str:
    head = ["Figure", "stormount", "Reference", "Ratio", "Goal", "Met?"]
    head += [f"{p} (peer)" for p in peers]
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
        for p in peers:  # each with its ratio to the reference, as stormount's
            cell = fmt(row.peers.get(p), row.unit)
            if row.peer_ref_ratio(p) is not None:
                cell += f" ({fmt_ratio(row.peer_ref_ratio(p))})"
            cells.append(cell)
        if row.failures:
            cells[0] += "<br>**FAILED: " + "; ".join(row.failures) + "**"
        if row.notes:
            cells[0] += "<br>*" + "; ".join(row.notes) + "*"
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def render(rows: list[Row], meta: dict[str, object], notes: list[str]) -> str:
    peers = [p for p in PEERS if any(p in r.peers for r in rows)]
    out = [f"# stormount benchmark, {meta['started']}", "",
           f"Parameters: {meta['parameters']}; took {meta['duration_s']:.0f} s.", "",
           table(rows, peers), ""]
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
