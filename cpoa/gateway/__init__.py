"""The gateway role over HTTP (`cpoa serve`): the JSON API, the dashboard and /metrics."""
