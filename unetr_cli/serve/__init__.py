"""`unetr serve`: a resident segmentation service for a department. The model is held warm by one engine per
device (`engine`); scans arrive over HTTP and from the web page (`http`, `static/index.html`) or from a PACS
(`dicom_node`), become jobs only once they pass `unetr predict`'s checks (`uploads`), and wait in a durable
queue (`jobs`); results come as NIfTI, seg.nrrd or DICOM-SEG (`results`). `service` runs it all.

Its libraries (FastAPI, uvicorn, pynetdicom) are the `serve` extra: `pip install 'unetr[serve]'`.
"""

from __future__ import annotations


def require_extra() -> None:
    """Refuse in one line when the `serve` extra is not installed."""
    import importlib.util

    from unetr_cli.errors import UsageError

    missing = [
        name for name in ("fastapi", "uvicorn", "pynetdicom") if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise UsageError(
            f"unetr serve needs {', '.join(missing)}: pip install 'unetr[serve]' in unetr's environment"
        )
