"""Label Studio image URLs -> image bytes, confined to what the backend is allowed to read.

Label Studio names a task's image as one of: an upload (`/data/upload/<project>/<hash>-name`, served
by Label Studio, needs its API token), a local-files storage path (`/data/local-files/?d=rel`, relative
to LOCAL_FILES_DOCUMENT_ROOT, read from disk here), or an http(s) URL (fetched; the token is sent only
to Label Studio's own host). A path with a `..` part, a file:// URL or a local path outside the
allowed roots, and any other scheme are refused before anything is opened; fetches have a time and
size limit. Images the project already holds never come here: the backend reads its own copy.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, unquote, urljoin, urlparse

MAX_BYTES = 64 << 20


class _TokenStaysHome(urllib.request.HTTPRedirectHandler):
    """Redirects (Label Studio sends cloud-storage images to presigned URLs) keep http(s) only and
    drop the API token when they leave its host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if urlparse(newurl).scheme not in ("http", "https"):
            raise ImageRefused(f"{req.full_url} redirects to {newurl!r}; refused")
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urlparse(newurl).netloc != urlparse(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


_OPENER = urllib.request.build_opener(_TokenStaysHome)


class ImageRefused(ValueError):
    """The URL points where the backend may not read, or nothing could be read there."""


@dataclass(frozen=True)
class ImageAccess:
    """Where images may come from: local roots, and Label Studio's address and token."""

    roots: tuple[Path, ...] = ()
    label_studio_url: str | None = None
    api_token: str | None = None
    timeout: float = 10.0

    def _confined(self, rel: str) -> Path:
        """The file `rel` names (absolute, or relative to a root), only inside a root (links resolved)."""
        if ".." in PurePosixPath(rel.replace("\\", "/")).parts:
            raise ImageRefused(f"{rel!r} has a '..' part; refused")
        candidates = [Path(rel)] if rel.startswith("/") else [r / rel for r in self.roots]
        for path in candidates:
            real = path.resolve()
            if not any(real.is_relative_to(r.resolve()) for r in self.roots):
                raise ImageRefused(f"{rel!r} is outside the allowed roots; refused")
            if real.is_file():
                return real
        raise ImageRefused(f"{rel!r}: no such file under the allowed roots")

    def read(self, url: str) -> bytes:
        """The bytes of the image `url` names, or ImageRefused saying why not."""
        parsed = urlparse(url)
        query = parse_qs(parsed.query)
        if parsed.path.startswith("/data/local-files") and "d" in query:
            return self._confined(query["d"][0]).read_bytes()
        if parsed.scheme == "file":
            return self._confined(unquote(parsed.path)).read_bytes()
        if parsed.scheme in ("", None) and not parsed.netloc:
            if ".." in PurePosixPath(unquote(parsed.path)).parts:
                raise ImageRefused(f"{url!r} has a '..' part; refused")
            if not parsed.path.startswith("/data/"):
                raise ImageRefused(f"{url!r} is not a Label Studio URL nor http(s)")
            if not self.label_studio_url:
                raise ImageRefused(f"{url!r} is served by Label Studio; start serve with --label-studio-url")
            url = urljoin(self.label_studio_url.rstrip("/") + "/", parsed.path.lstrip("/")
                          + (f"?{parsed.query}" if parsed.query else ""))
            parsed = urlparse(url)
        if parsed.scheme not in ("http", "https"):
            raise ImageRefused(f"{url!r}: scheme {parsed.scheme!r} refused (http, https, Label Studio paths only)")
        if ".." in PurePosixPath(unquote(parsed.path)).parts:
            raise ImageRefused(f"{url!r} has a '..' part; refused")
        return self._fetch(url, parsed.netloc)

    def _fetch(self, url: str, host: str) -> bytes:
        headers = {}
        if self.api_token and self.label_studio_url and urlparse(self.label_studio_url).netloc == host:
            headers["Authorization"] = f"Token {self.api_token}"
        try:
            with _OPENER.open(urllib.request.Request(url, headers=headers), timeout=self.timeout) as resp:
                data = resp.read(MAX_BYTES + 1)
        except urllib.error.HTTPError as e:
            raise ImageRefused(f"{url}: HTTP {e.code} {e.reason}") from None
        except (OSError, ValueError) as e:
            raise ImageRefused(f"{url}: cannot fetch ({e})") from None
        if len(data) > MAX_BYTES:
            raise ImageRefused(f"{url}: larger than {MAX_BYTES >> 20} MiB")
        return data
