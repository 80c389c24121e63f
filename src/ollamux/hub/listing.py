"""What a hub repo holds, asked with huggingface_hub (blocking: call these in a worker thread).

The library knows the hub's API, its error codes and its authentication: the token is HF_TOKEN or the one
`hf auth login` saved, and `endpoint` is the `runtime.hf_endpoint` setting (HF_ENDPOINT by default), so a
mirror, a private hub or a test's fake hub all work. One call, `model_info(files_metadata=True)`, gives
every file with its size and its LFS sha256, and the commit they belong to. The library is imported by the
first call (in the worker thread), not with the server: it takes a sixth of a second.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BackendUnavailable, Forbidden, OllamuxError
from ..version import __version__
from .choose import RepoFile

__all__ = ["Listing", "download_headers", "file_url", "list_repo", "not_found"]

LIBRARY = "ollamux"


@dataclass(frozen=True)
class Listing:
    repo_id: str  # as the hub spells it (the folder the files go to)
    commit: str | None  # every file is downloaded from this commit, so they belong together
    files: tuple[RepoFile, ...]


def not_found(what: str) -> OllamuxError:
    """Ollama's 404 for a name the registry does not have, and what was looked for."""
    return OllamuxError(f"pull model manifest: file does not exist: {what}", status=404)


def list_repo(repo_id: str, *, endpoint: str, timeout: float = 30.0) -> Listing:
    """The files of a model repo; 404 when there is no such repo, 403 when it is gated, 502 when the hub fails."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    api = HfApi(endpoint=endpoint, library_name=LIBRARY, library_version=__version__)
    try:
        info = api.model_info(repo_id, files_metadata=True, timeout=timeout)
    except GatedRepoError:  # before RepositoryNotFoundError: it is one
        raise Forbidden(
            f"pull model manifest: {repo_id} on {endpoint} is gated: accept its terms on the hub, "
            "then set HF_TOKEN (or run `hf auth login`) where ollamux runs"
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise not_found(
            f"no model repository '{repo_id}' on {endpoint} (or it is private and no token allows it)"
        ) from None
    except HfHubHTTPError as exc:
        raise BackendUnavailable(f"pull model manifest: {endpoint} answered: {_first_line(exc)}") from None
    except Exception as exc:  # the library's HTTP client's own errors (connection, timeout, offline mode)
        raise BackendUnavailable(
            f"pull model manifest: cannot reach {endpoint}: {_first_line(exc)} "
            "(offline, or behind a proxy? HTTPS_PROXY, or a mirror: runtime.hf_endpoint or HF_ENDPOINT)"
        ) from None
    files = tuple(
        RepoFile(
            path=s.rfilename,
            size=s.lfs.size if s.lfs is not None else s.size,
            sha256=s.lfs.sha256 if s.lfs is not None else None,
        )
        for s in info.siblings or ()
    )
    # the hub's spelling names the folder and the model; anything but a change of case (a renamed repo, a
    # hostile mirror's "../..") keeps the name the client asked for
    spelt = info.id if isinstance(info.id, str) and info.id.lower() == repo_id.lower() else repo_id
    return Listing(repo_id=spelt, commit=info.sha, files=files)


def file_url(listing: Listing, path: str, endpoint: str) -> str:
    """The `resolve` URL of one file at the listing's commit (the hub redirects large files to its CDN)."""
    from huggingface_hub import hf_hub_url

    return hf_hub_url(listing.repo_id, path, revision=listing.commit or "main", endpoint=endpoint)


def download_headers() -> dict[str, str]:
    """The hub's headers for a download: its user agent and the token, if any (it reads the token file)."""
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]  # documented, not re-exported

    headers = build_hf_headers(library_name=LIBRARY, library_version=__version__)
    headers["Accept-Encoding"] = "identity"  # bytes as stored: their sha256 is checked
    return headers


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
