"""Weights from the Hugging Face hub, verified by sha256 before they are used.

`huggingface_hub` handles the cache, tokens, `HF_HOME`, `HF_ENDPOINT` and `HF_HUB_OFFLINE` (we read the last
three at call time, so they work however early the library was imported). It only checks a download's size;
we also check its sha256: against the registry entry for known models, and against the hub's own content
hash (the ETag of LFS files) for any other file.

The registry lists only artifacts that exist. At the time of writing no UNETR BTCV weights are published on
the hub: the official files are behind the links in the reference README
(github.com/Project-MONAI/research-contributions, UNETR/BTCV), and MONAI's BTCV bundle on the hub is a
Swin-UNETR, which this network cannot load.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from unetr_cli.errors import HubError, OutputExistsError, UsageError
from unetr_cli.files import atomic_output

SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TRANSPORT_MODULES = {"httpx", "httpx2", "httpcore", "requests", "urllib3"}


@dataclass(frozen=True)
class KnownModel:
    """A downloadable artifact: where it is and what it must hash to."""

    name: str
    repo_id: str
    filename: str
    revision: str
    sha256: str
    feature_size: int
    label_set: str
    description: str = ""


REGISTRY: dict[str, KnownModel] = {}

REFERENCE_WEIGHTS_HINT = (
    "no UNETR BTCV weights are published on the Hugging Face hub; the official UNETR_model_best_acc.pth "
    "and its TorchScript file are linked from the reference README "
    "(github.com/Project-MONAI/research-contributions, UNETR/BTCV): download them, put them in "
    "./pretrained_models and use --pretrained-dir"
)


def _cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = (
        os.environ.get("HF_HOME")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    )
    return Path(home) / "hub"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve(
    repo_or_name: str, filename: str | None, revision: str | None
) -> tuple[str, str, str | None, KnownModel | None]:
    """(repo_id, filename, revision, registry entry) for a registry name or a repo id."""
    entry = REGISTRY.get(repo_or_name) or next(
        (
            m
            for m in REGISTRY.values()
            if m.repo_id == repo_or_name and (filename is None or m.filename == filename)
        ),
        None,
    )
    if entry is not None:
        return entry.repo_id, filename or entry.filename, revision or entry.revision, entry
    if filename is None:
        raise UsageError(
            f"{repo_or_name}: not in the registry of known models; name the file with --filename"
        )
    return repo_or_name, filename, revision, None


def fetch(
    repo_id: str, filename: str, revision: str | None = None, expected_sha256: str | None = None
) -> Path:
    """Download (or take from the cache) one file and verify its sha256; returns the cached path."""
    from huggingface_hub import errors as hub_errors
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()  # its retry warnings would interleave with our one-line errors
    where = f"{repo_id}/{filename}" + (f"@{revision}" if revision else "")
    download = functools.partial(
        hf_hub_download,
        repo_id,
        filename,
        revision=revision,
        cache_dir=_cache_dir(),
        endpoint=os.environ.get("HF_ENDPOINT"),
        local_files_only=_offline(),
    )
    try:
        cached = Path(_until_stalled(download, _cache_dir(), where))
    except hub_errors.HFValidationError as err:
        raise UsageError(f"{repo_id}: not a valid hub repository id ({str(err).splitlines()[0]})") from None
    except hub_errors.LocalEntryNotFoundError as err:
        status = _http_status(err)
        if status is not None:
            raise HubError(f"{where}: the hub answered HTTP {status}; try again later") from None
        reason = "HF_HUB_OFFLINE is set" if _offline() else "the hub cannot be reached"
        raise HubError(
            f"{where}: not in the local cache and {reason}; fetch it once with network access "
            f"(`unetr download {repo_id} --filename {filename}`) or copy the file and use "
            "--pretrained-dir"
        ) from None
    except hub_errors.RepositoryNotFoundError:
        raise HubError(
            f"{repo_id}: repository not found on the hub (or it is private: log in with "
            "`hf auth login` or set HF_TOKEN)"
        ) from None
    except hub_errors.RevisionNotFoundError:
        raise HubError(f"{where}: revision not found") from None
    except hub_errors.EntryNotFoundError:
        raise HubError(f"{where}: no such file in the repository") from None
    except hub_errors.HfHubHTTPError as err:
        raise HubError(
            f"{where}: the hub answered HTTP {_http_status(err) or '?'}; try again later"
        ) from None
    except ValueError as err:  # the hub client's check of the file name ("cannot contain a '..'")
        if "filename" not in str(err).lower():
            raise
        raise UsageError(f"--filename {filename}: {str(err).splitlines()[0]}") from None
    except Exception as err:  # size mismatch, broken connection (the HTTP client's own errors), disk full
        if not isinstance(err, OSError) and type(err).__module__.split(".")[0] not in _TRANSPORT_MODULES:
            raise
        raise HubError(f"{where}: download failed ({str(err).splitlines()[0]}); nothing was kept") from None
    _verify(cached, where, expected_sha256)
    return cached


def stall_limit_s() -> float:
    """How long a download may go without receiving a byte: six of the hub client's read timeouts
    (HF_HUB_DOWNLOAD_TIMEOUT, 10 s by default), since the client retries a silent server without end."""
    return 6.0 * float(os.environ.get("HF_HUB_DOWNLOAD_TIMEOUT") or 10)


def _until_stalled(download, cache: Path, where: str) -> str:
    """Run `download` in a helper thread and give up once no byte has arrived for `stall_limit_s()`: a server
    that accepts the connection and never answers would otherwise hold the command forever."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["path"] = download()
        except BaseException as err:  # handed to the caller below
            outcome["error"] = err

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    limit, seen, quiet_since = stall_limit_s(), -1, time.monotonic()
    while worker.is_alive():
        worker.join(0.25)
        received = sum(p.stat().st_size for p in cache.glob("**/*.incomplete") if p.is_file())
        if received != seen:
            seen, quiet_since = received, time.monotonic()
        elif time.monotonic() - quiet_since > limit:
            raise HubError(
                f"{where}: the hub stopped answering (nothing received for {limit:.0f} s); try later"
            )
    if "error" in outcome:
        raise outcome["error"]
    return outcome["path"]


def _http_status(err: BaseException) -> int | None:
    """The HTTP status of the first error in the exception chain that carries one."""
    while err is not None:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status is not None:
            return int(status)
        err = err.__cause__ or err.__context__
    return None


def _verify(cached: Path, where: str, expected: str | None) -> None:
    """Check the file's sha256 against the registry, or the hub's content hash; delete it when wrong."""
    blob = cached.resolve()
    expected = expected or (blob.name if SHA256.match(blob.name) else None)
    if expected is None:
        return
    actual = sha256_of(blob)
    if actual != expected:
        blob.unlink(missing_ok=True)
        cached.unlink(missing_ok=True)
        raise HubError(
            f"{where}: sha256 mismatch (expected {expected[:12]}..., got {actual[:12]}...); the "
            "corrupted file was deleted"
        )


def download(
    repo_or_name: str, filename: str | None, revision: str | None, to_dir: Path, overwrite: bool = False
) -> Path:
    """Fetch a file and place it in `to_dir` (where --pretrained-dir expects it), atomically. A file of that
    name already there stays unless it holds the same bytes (nothing to do) or `overwrite`."""
    if not to_dir.parent.exists():
        raise UsageError(f"--to {to_dir}: the parent folder {to_dir.parent} does not exist")
    repo_id, filename, revision, entry = resolve(repo_or_name, filename, revision)
    cached = fetch(repo_id, filename, revision, entry.sha256 if entry else None)
    to_dir.mkdir(exist_ok=True)
    target = to_dir / Path(filename).name
    if target.exists() and not overwrite:
        if target.is_file() and sha256_of(target) == sha256_of(cached):
            return target
        raise OutputExistsError(
            target, "it holds other bytes than the download; pass --overwrite to replace it"
        )
    with atomic_output(target) as tmp:
        shutil.copyfile(cached, tmp)
    return target


def fetch_reference(spec: str) -> Path:
    """`OWNER/REPO[/FILE]` (after `hub:`) or a registry name, downloaded into the cache on demand."""
    parts = spec.split("/", 2)
    if spec in REGISTRY:
        repo_id, filename, revision, entry = resolve(spec, None, None)
    elif len(parts) == 3:
        repo_id, filename, revision, entry = resolve(f"{parts[0]}/{parts[1]}", parts[2], None)
    elif len(parts) == 2:
        repo_id, filename, revision, entry = resolve(spec, None, None)
    else:
        raise UsageError(f"hub:{spec}: expected hub:OWNER/REPO/FILE or hub:NAME from `unetr download --list`")
    return fetch(repo_id, filename, revision, entry.sha256 if entry else None)
