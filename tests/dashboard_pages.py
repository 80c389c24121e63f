"""Browser pages for the dashboard's tests: they collect every script and console error (the tests' `pages`
fixture fails a test on any) and every request they made."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import Browser, ConsoleMessage, Page, Request

from .dashboard_helpers import DESKTOP

__all__ = ["Pages"]


class Pages:
    """Browser pages (each in its own context: its own session storage) that fail the test on a script error.

    `urls` is every request the pages made, `aborted` those the page itself cancelled; `allow(text)` lets
    through the console errors a test provokes on purpose (Chromium logs a refused fetch or a cut stream)."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.errors: list[str] = []
        self.contexts: list[Any] = []
        self.urls: list[str] = []
        self.aborted: list[str] = []
        self.allowed = [f"status of {c}" for c in (401, 403)]  # refused keys: the auth test's point

    def allow(self, text: str) -> None:
        self.allowed.append(text)

    def streams(self) -> list[str]:
        """The request log's live streams the pages opened, in order."""
        return [u for u in self.urls if "/admin/requests/stream" in u]

    def polls(self) -> list[str]:
        """The `?after=` polls of the request log the pages made (the stand-in for a stream)."""
        return [u for u in self.urls if "/admin/requests?" in u and "after=" in u]

    def open(
        self, url: str, tab: str = "overview", viewport: dict[str, int] = DESKTOP, refuse: str | None = None
    ) -> Page:
        """The page at `url`/ui#`tab`; `refuse`: a URL pattern answered 404 before it leaves the browser."""
        ctx = self.browser.new_context(viewport=viewport)  # type: ignore[arg-type]
        self.contexts.append(ctx)
        page = ctx.new_page()
        if refuse is not None:
            page.route(refuse, lambda route: route.fulfill(status=404, content_type="text/plain", body="404"))
        page.set_default_timeout(30_000)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        page.on("console", self._console)
        page.on("request", lambda r: self.urls.append(r.url))
        page.on("requestfailed", self._failed)
        page.goto(f"{url}/ui#{tab}")
        return page

    def _failed(self, request: Request) -> None:
        if request.failure == "net::ERR_ABORTED":
            self.aborted.append(request.url)

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error" and not any(a in msg.text for a in self.allowed):
            self.errors.append(f"console: {msg.text} ({msg.location.get('url')})")

    def close(self) -> None:
        for ctx in self.contexts:
            ctx.close()
