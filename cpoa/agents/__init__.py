"""Everything that speaks HTTP to the agents: the protocol client and the result contracts."""
