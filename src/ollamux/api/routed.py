"""Routes passed to the backend that serves the model they name: rerank, llama.cpp's extras, audio, images,
and `/upstream/{model}/...`."""

from __future__ import annotations

from aiohttp import web

__all__ = ["add_routes"]


def add_routes(app: web.Application) -> None:
    return None
