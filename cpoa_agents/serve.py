"""Runs the seven reference agents in one process (`cpoa agents serve`, and the demo)."""

from __future__ import annotations

import dataclasses
import importlib
import pathlib

from cpoa import defaults
from cpoa_agents.service import Service

AGENT_CLASSES = {
    "WCHA": ("cpoa_agents.wcha", "HarvestAgent"),
    "TDA": ("cpoa_agents.tda", "TopicAgent"),
    "SCA": ("cpoa_agents.sca", "SnippetAgent"),
    "PSWA": ("cpoa_agents.pswa", "ScriptAgent"),
    "VFA": ("cpoa_agents.vfa", "VoiceAgent"),
    "IGA": ("cpoa_agents.iga", "ImageAgent"),
    "ASF": ("cpoa_agents.asf", "FrontendAgent"),
}
"""Agent short name → (module, class); modules load only when served (heavy imports)."""


@dataclasses.dataclass
class Fleet:
    """The running agents by short name, with their base URLs."""

    agents: dict[str, Service]

    def url(self, name: str) -> str:
        return self.agents[name].base_url

    def env(self) -> dict[str, str]:
        """The environment variables that point CPOA at this fleet."""
        env = {f"{name}_SERVICE_URL": agent.base_url for name, agent in self.agents.items()
               if name != "ASF"}
        asf = self.agents["ASF"].base_url
        env["ASF_NOTIFICATION_URL"] = asf + "/asf/internal/notify_new_audio"
        env["CPOA_ASF_SEND_UI_UPDATE_URL"] = asf + "/asf/internal/send_ui_update"
        return env

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.stop()


def build(name: str, data_dir: pathlib.Path, **options: object) -> Service:
    """Instantiates one agent with its own data folder."""
    module, cls = AGENT_CLASSES[name]
    agent_class = getattr(importlib.import_module(module), cls)
    return agent_class(data_dir / name.lower(), **options)


def serve(data_dir: str | pathlib.Path, *, host: str = "127.0.0.1",
          ports: dict[str, int] | None = None,
          options: dict[str, dict[str, object]] | None = None) -> Fleet:
    """Starts every agent; ``ports`` default to the contract's (0 picks a free port).

    Args:
        data_dir: Parent folder of each agent's data folder.
        host: Interface to listen on.
        ports: Port per agent short name.
        options: Constructor keyword arguments per agent short name.
    """
    ports = {**defaults.AGENT_PORTS, **(ports or {})}
    root = pathlib.Path(data_dir)
    fleet = Fleet({})
    try:
        for name in AGENT_CLASSES:
            agent = build(name, root, **(options or {}).get(name, {}))
            agent.start(host, ports[name])
            fleet.agents[name] = agent
    except BaseException:
        fleet.stop()
        raise
    return fleet
