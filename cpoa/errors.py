"""The one exception tree of CPOA.

    CPOAError
    ├── ConfigError              a bad environment variable or option
    ├── InvalidInput             a bad argument to the public API (names the field)
    │   └── UnknownWorkflow      no workflow with that id
    ├── InvalidTransition        the machine refuses the trigger in this state
    ├── MachineMismatch          the database enforces another state machine than this code
    ├── StaleState               the row changed under us (lost lease, fenced version)
    ├── Unauthorized             an API call without the right bearer token (CPOA_API_TOKEN)
    ├── StoreError               the database failed
    │   ├── DuplicateWorkflow
    │   └── StoreBusy            retryable: serialization failure, lock not available
    └── AgentError               an agent call failed (service, status_code, body)
        ├── AgentUnavailable     transient: connection refused, 429, 502, 503, 504, bodiless 5xx
        │   └── AgentTimeout     no answer within the request's timeout
        ├── AgentRejected        permanent: 400, 404, 413, 422 or another 4xx
        ├── AgentTaskFailed      the agent ran the task and reports FAILURE or a business error
        └── InvalidAgentResult   the reply does not match the contract (names the field)

Each class's docstring is its default message; data lives in attributes, not only in the text.
"""

from __future__ import annotations


class CPOAError(Exception):
    """CPOA failed."""

    def __init__(self, message: str | None = None, **attributes: object) -> None:
        super().__init__(message or (self.__doc__ or "").strip())
        for name, value in attributes.items():
            setattr(self, name, value)


class ConfigError(CPOAError):
    """Invalid configuration."""

    def __init__(self, message: str | None = None, *, variable: str = "") -> None:
        super().__init__(message, variable=variable)


class InvalidInput(CPOAError):
    """Invalid input."""

    def __init__(self, message: str | None = None, *, field: str = "") -> None:
        super().__init__(message, field=field)


class UnknownWorkflow(InvalidInput):
    """No such workflow."""

    def __init__(self, workflow_id: object) -> None:
        super().__init__(f"workflow_id: no workflow {workflow_id}", field="workflow_id")
        self.workflow_id = workflow_id


class InvalidTransition(CPOAError):
    """The state machine refuses this transition."""

    def __init__(self, message: str | None = None, *, workflow_id: object = None,
                 state: str | None = None, trigger: str | None = None) -> None:
        super().__init__(message, workflow_id=workflow_id, state=state, trigger=trigger)


class MachineMismatch(CPOAError):
    """The database enforces another state machine than this code; run `cpoa db init`."""


class StaleState(CPOAError):
    """The workflow changed under this worker; its result was not applied."""

    def __init__(self, message: str | None = None, *, workflow_id: object = None) -> None:
        super().__init__(message, workflow_id=workflow_id)


class Unauthorized(CPOAError):
    """A valid API token is required."""

    def __init__(self, message: str | None = None, *, token_given: bool = False) -> None:
        super().__init__(message, token_given=token_given)


class StoreError(CPOAError):
    """The database operation failed."""


class DuplicateWorkflow(StoreError):
    """A workflow with this id already exists."""


class StoreBusy(StoreError):
    """The database is busy; try again."""


class AgentError(CPOAError):
    """The agent call failed."""

    def __init__(self, message: str | None = None, *, service: str = "",
                 status_code: int | None = None, body: str = "", url: str = "",
                 retry_after: float | None = None) -> None:
        super().__init__(message, service=service, status_code=status_code, body=body,
                         url=url, retry_after=retry_after)


class AgentUnavailable(AgentError):
    """The agent is unavailable for now."""


class AgentTimeout(AgentUnavailable):
    """The agent did not answer in time."""


class AgentRejected(AgentError):
    """The agent rejected the request."""


class AgentTaskFailed(AgentError):
    """The agent's task failed."""


class InvalidAgentResult(AgentError):
    """The agent's reply does not match the contract."""

    def __init__(self, message: str | None = None, *, service: str = "", field: str = "",
                 **kwargs: object) -> None:
        super().__init__(message, service=service, **kwargs)  # type: ignore[arg-type]
        self.field = field
