"""CPOA's reference agents: seven HTTP services that speak the agent protocol and make a real
episode offline (contract §2–4). Each can be replaced by another service at its URL."""
