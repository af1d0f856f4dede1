"""The JSON API: /v1/podcasts, /v1/snippets, /v1/workflows…, /healthz, /metrics."""

from fastapi import APIRouter

router = APIRouter()
