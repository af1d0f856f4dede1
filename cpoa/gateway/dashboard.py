"""The operator dashboard: workflow list, workflow page, live updates over SSE."""

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)
