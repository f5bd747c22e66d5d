"""`unetr serve`: the model held warm for a department, reached by a browser, by HTTP, and by a PACS."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from unetr_cli.commands import options as opt
from unetr_cli.commands.weights import WeightsOptions, model_settings

_NET, _DICOM = "Service", "DICOM node"


def serve(
    checkpoint: opt.Checkpoint = None,
    pretrained_dir: opt.PretrainedDir = None,
    pretrained_model_name: opt.PretrainedModelName = None,
    trust_torchscript: opt.TrustTorchscript = False,
    state: Annotated[
        Path, typer.Option(help="Folder for the job queue and every job's files.", rich_help_panel=_NET)
    ] = Path("unetr-serve"),
    host: Annotated[
        str,
        typer.Option(
            help="Address to listen on (another than this machine's needs a token).", rich_help_panel=_NET
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port.", rich_help_panel=_NET)] = 8000,
    token_file: Annotated[
        Path | None,
        typer.Option(
            help="A file holding the bearer token every request must carry.",
            rich_help_panel=_NET,
            dir_okay=False,
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option("--insecure", help="Listen on another address without a token.", rich_help_panel=_NET),
    ] = False,
    max_upload_mib: Annotated[
        int, typer.Option(min=1, help="Largest upload accepted, in MiB.", rich_help_panel=_NET)
    ] = 2048,
    keep_hours: Annotated[
        float,
        typer.Option(
            min=0.01, help="How long finished jobs and their results are kept.", rich_help_panel=_NET
        ),
    ] = 24.0,
    batch: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="Queued jobs an engine takes at once, segmented as one batch.",
            rich_help_panel=_NET,
        ),
    ] = 4,
    allow_non_ct: Annotated[
        bool,
        typer.Option(
            "--allow-non-ct", help="Segment scans that are not CT in Hounsfield units.", rich_help_panel=_NET
        ),
    ] = False,
    dicom_port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Start the DICOM node on this port.", rich_help_panel=_DICOM),
    ] = None,
    dicom_ae: Annotated[str, typer.Option(help="The node's AE title.", rich_help_panel=_DICOM)] = "UNETR",
    dicom_allow: Annotated[
        list[str] | None,
        typer.Option(help="A calling AE title to accept (repeat; default: any).", rich_help_panel=_DICOM),
    ] = None,
    dicom_send: Annotated[
        str | None,
        typer.Option(
            help="Where DICOM-SEGs go: AE@HOST:PORT (default: the sender, at --dicom-send-port).",
            rich_help_panel=_DICOM,
        ),
    ] = None,
    dicom_send_port: Annotated[
        int, typer.Option(min=1, max=65535, help="The sender's port for results.", rich_help_panel=_DICOM)
    ] = 11112,
    dicom_idle: Annotated[
        float,
        typer.Option(
            min=0.1,
            help="Seconds without a new image after which a series is complete.",
            rich_help_panel=_DICOM,
        ),
    ] = 5.0,
    device: opt.Device = None,
    config: opt.Config = None,
    preset: opt.Preset = None,
    set_: opt.Set = None,
) -> None:
    """Serve segmentation: the model loads once and stays warm; scans arrive from a browser (the web page at
    /), from programs (HTTP: POST /jobs, GET /jobs/ID, GET /jobs/ID/result), and, with --dicom-port, from a
    PACS (C-STORE; the DICOM-SEG goes back by C-STORE). Jobs live in --state and survive a restart. Listens on
    this machine only unless --host names another address (with --token-file, or --insecure).

    Examples:
      unetr serve --checkpoint runs/btcv/checkpoint_best.pt
      unetr serve --checkpoint model.pth --dicom-port 11112 --dicom-send PACS@10.0.0.5:104
      unetr serve --checkpoint model.pth --host 0.0.0.0 --token-file /etc/unetr/token
    """
    from unetr_cli.console import Reporter
    from unetr_cli.serve import require_extra
    from unetr_cli.serve.dicom_node import NodeOptions
    from unetr_cli.serve.service import ServeOptions, read_token, serving_devices
    from unetr_cli.serve.service import serve as run_service

    require_extra()
    node = None
    if dicom_port is not None:
        allow = tuple(dicom_allow or ())
        node = NodeOptions(
            dicom_ae, host, dicom_port, allow, dicom_send, dicom_send_port, dicom_idle, allow_non_ct
        )
    options = ServeOptions(
        state=state,
        host=host,
        port=port,
        token=read_token(token_file),
        insecure=insecure,
        max_upload_bytes=max_upload_mib << 20,
        keep_hours=keep_hours,
        batch=batch,
        allow_non_ct=allow_non_ct,
        dicom=node,
    )
    options.check()  # before the weights are read
    weights = WeightsOptions(checkpoint, pretrained_dir, pretrained_model_name, trust_torchscript).read()
    settings = model_settings(weights, opt.sources(config, preset, set_), {"inference.device": device})
    options = dataclasses.replace(options, devices=serving_devices(settings.inference.device))
    run_service(options, settings, weights, Reporter("rich"))
