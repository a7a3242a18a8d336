"""A packet trace: the notes stages write while they handle one packet, and the actions it ended in.

Stages write notes only when a trace is attached to the packet (``pkt.trace is not None``), so the
trace is produced by the very code that forwards packets, and costs nothing when off.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Trace:
    port: str
    summary: str = ""
    notes: list[tuple[str, str]] = field(default_factory=list)  # (stage, note)
    actions: list[str] = field(default_factory=list)
    dry_run: bool = False

    def note(self, stage: str, text: str) -> None:
        self.notes.append((stage, text))

    def render(self) -> str:
        head = f"port {self.port}: {self.summary}"
        if self.dry_run:
            head += "  (dry run: tables are not changed)"
        lines = [head]
        width = max((len(stage) for stage, _ in self.notes), default=0)
        for stage, text in self.notes:
            lines.append(f"  {stage.ljust(width)}  {text}")
        lines.append("  => " + ("; ".join(self.actions) if self.actions else "no action"))
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "port": self.port,
            "summary": self.summary,
            "dry_run": self.dry_run,
            "stages": [{"stage": s, "note": n} for s, n in self.notes],
            "actions": list(self.actions),
            "text": self.render(),
        }
