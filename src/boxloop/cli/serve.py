"""`boxloop serve`: the project as a Label Studio ML backend (boxloop.serve does the work).

In its own module because cli/main.py is full; registered on the same `app` (cli/__init__ imports it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from boxloop.cli.errors import user_errors
from boxloop.cli.main import app
from boxloop.cli.options import (BackboneOpt, BatchOpt, DeviceOpt, ModelOpt, NoPretrainedOpt, SeedOpt, SizeOpt,
                                 StepsOpt, loop_config)
from boxloop.cli.output import out

AUTH_ENV = "BOXLOOP_SERVE_AUTH"  # USER:PASSWORD, read from the environment so it stays out of `ps`
TOKEN_ENV = "LABEL_STUDIO_API_KEY"


@app.command()
@user_errors
def serve(
    project: Annotated[Path, typer.Argument(help="Project folder (trained: `boxloop train` first).")],
    host: Annotated[str, typer.Option(help="Address to bind; 127.0.0.1 keeps it on this machine.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (Label Studio's ML backends default to 9090).")] = 9090,
    strategy: Annotated[Optional[str], typer.Option(help="Image strategy whose order becomes the task score (default: the project's last round's, else localization_aware).")] = None,
    retrain_every: Annotated[int, typer.Option(help="Retrain after this many new or changed annotations.")] = 10,
    label_studio_url: Annotated[Optional[str], typer.Option(help="Label Studio's address, for uploaded images (/data/upload/...).")] = None,
    local_files_root: Annotated[Optional[list[Path]], typer.Option(help="Folder /data/local-files/?d= paths are read under (LOCAL_FILES_DOCUMENT_ROOT); repeatable. The project's image folder is always allowed.")] = None,
    display_threshold: Annotated[float, typer.Option(help="Pre-annotations show boxes scoring at least this.")] = 0.3,
    model: ModelOpt = None,
    backbone: BackboneOpt = "efficientnet_lite0",
    steps: StepsOpt = None,
    image_size: SizeOpt = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    no_pretrained: NoPretrainedOpt = False,
) -> None:
    """Serve PROJECT to Label Studio as an ML backend: pre-annotations with scores, tasks scored by the
    strategy (sort the Data Manager by prediction score), annotations into the store as they are
    submitted, and retraining in the background. Basic auth: set BOXLOOP_SERVE_AUTH=user:password;
    Label Studio's API token (for uploaded images): LABEL_STUDIO_API_KEY."""
    from boxloop.formats.labelstudio import labeling_config
    from boxloop.loop.config import LoopConfig
    from boxloop.serve import Backend, ServeSettings, make_server
    from boxloop.serve.images import ImageAccess
    from boxloop.store import Project

    if retrain_every < 1:
        raise typer.BadParameter("must be >= 1", param_hint="--retrain-every")
    auth = os.environ.get(AUTH_ENV)
    if auth is not None and ":" not in auth:
        raise ValueError(f"${AUTH_ENV} must be USER:PASSWORD")
    with Project.open(project) as proj:
        roots = (proj.image_root, *(local_files_root or ()))
        last = proj.last_round()
        if strategy is None:  # the loop's: what the project's last round selected with
            strategy = LoopConfig.from_dict(last.config).selection.strategy if last else "localization_aware"
    cfg = loop_config(model=model, backbone=backbone, steps=steps, image_size=image_size, batch_size=batch_size,
                      device=device, seed=seed, no_pretrained=no_pretrained, strategy=strategy)
    access = ImageAccess(roots=tuple(Path(r).resolve() for r in roots), label_studio_url=label_studio_url,
                         api_token=os.environ.get(TOKEN_ENV))
    out.print("scoring the pool with the current model ...")
    backend = Backend(project, ServeSettings(cfg, retrain_every, display_threshold, access))
    server = make_server(backend, host, port, tuple(auth.split(":", 1)) if auth else None)  # type: ignore[arg-type]
    backend.resume()
    out.print("labeling config for the Label Studio project (Settings > Labeling Interface > Code):\n"
              + escape(labeling_config(backend.classes, flags=())))
    out.print(f"serving {escape(str(project))} ({backend.model_version}, {len(backend.priority)} pool images scored) "
              f"at http://{host}:{server.server_address[1]}; add it in Label Studio: Settings > Model")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
