"""Mermaid state diagrams drawn from the machine definitions (`cpoa diagram`)."""

from __future__ import annotations

from cpoa import machine


def mermaid(kind: str, current: str | None = None) -> str:
    """Returns a Mermaid ``stateDiagram-v2`` of one kind, optionally highlighting a state."""
    lines = ["stateDiagram-v2", f"    %% {kind} workflow",
             f"    [*] --> {machine.initial_state(kind)}"]
    for (source, dest), triggers in machine.labelled_edges(kind).items():
        lines.append(f"    {source} --> {dest}: {', '.join(triggers)}")
    for state in sorted(machine.FINAL_STATES):
        lines.append(f"    {state} --> [*]")
    if current:
        lines += ["    classDef current fill:#f9d71c,stroke:#333", f"    class {current} current"]
    return "\n".join(lines)
