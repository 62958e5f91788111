"""`boxloop serve` under load (issue 28), against 127.0.0.1 only: predict latency per task, and a
burst of webhooks while predicts run.

A synthetic project (--images of --size px, --labelled of them labelled, the rest the pool) is
initialised and trained for --steps with the default detector (fcos_lite + Lite0) at --image-size;
the server runs in this process on a free port. Times:
  - predict latency per task (one task per call, sequential): pool images answer from the ranking
    pass, labelled images are predicted live (a real forward pass at --image-size);
  - the ranking pass (predict the pool + rank it with the strategy): what a kept retraining adds
    before scores are fresh;
  - 20 concurrent predict calls together with a burst of --webhooks annotations from 8 threads:
    HTTP codes, lost or doubled annotations (the store's tool_annotations against what was sent);
  - with --retrain-every N: from the N-th new annotation to a finished retraining and re-ranked pool.
Prints a table and writes benchmarks/results/serve_latency.json.

    .venv/bin/python benchmarks/serve_latency.py [--images 60] [--size 320] [--steps 10] [--webhooks 200]
    .venv/bin/python benchmarks/serve_latency.py --images 560 --labelled 60 --retrain-every 10  # 500-image pool
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")),
                    platform.processor())
    except OSError:
        return platform.processor()


def _call(url: str, path: str, body: object) -> tuple[int, dict]:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _task(key: str, tid: int) -> dict:
    return {"id": tid, "data": {"image": f"/data/local-files/?d={key}", "boxloop_key": key}}


def _webhook(key: str, tid: int, aid: int, size: int) -> dict:
    box = {"id": "r0", "type": "rectanglelabels", "from_name": "label", "to_name": "image",
           "original_width": size, "original_height": size, "image_rotation": 0,
           "value": {"x": 10.0, "y": 10.0, "width": 20.0, "height": 20.0, "rotation": 0, "rectanglelabels": ["circle"]}}
    return {"action": "ANNOTATION_CREATED", "project": {"id": 1}, "task": _task(key, tid),
            "annotation": {"id": aid, "task": tid, "result": [box], "was_cancelled": False, "completed_by": 1,
                           "updated_at": "2026-12-08T00:00:00Z"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--labelled", type=int, default=20)
    ap.add_argument("--size", type=int, default=320, help="synthetic image side, px")
    ap.add_argument("--image-size", type=int, default=320, help="the detector's input size")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--webhooks", type=int, default=200)
    ap.add_argument("--concurrent", type=int, default=20)
    ap.add_argument("--retrain-every", type=int, default=0,
                    help="also time the N-th new annotation -> retrained, re-ranked pool (0: skip)")
    args = ap.parse_args()

    import torch
    from typer.testing import CliRunner

    from boxloop.cli import app
    from boxloop.cli.options import loop_config
    from boxloop.formats.labelstudio import labeling_config
    from boxloop.serve import Backend, ServeSettings, make_server
    from boxloop.serve.images import ImageAccess
    from boxloop.store import Project
    from boxloop.synthetic import make_dataset

    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="serve_latency_"))
    try:
        make_dataset(work / "data", n_images=args.images, image_size=args.size, seed=0)
        ann = work / "ann"
        ann.mkdir()
        for xml in sorted((work / "data" / "annotations").glob("*.xml"))[:args.labelled]:
            shutil.copy(xml, ann / xml.name)
        project = work / "proj"
        train = ("--steps", str(args.steps), "--image-size", str(args.image_size), "--device", "cpu")
        for cmd in (("init", project, "--images", work / "data" / "images", "--annotations", ann),
                    ("train", project, *train)):
            res = CliRunner().invoke(app, [str(a) for a in cmd])
            if res.exit_code:
                sys.exit(res.output)
        cfg = loop_config(image_size=args.image_size, steps=args.steps, device="cpu")
        with Project.open(project) as p:
            root = p.image_root
            labelled = sorted(p.annotations("labelled"))
        t0 = time.perf_counter()
        backend = Backend(project, ServeSettings(cfg, retrain_every=10**9, access=ImageAccess(roots=(root,))))
        ranking_s = time.perf_counter() - t0
        server = make_server(backend, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert _call(url, "/setup", {"project": "1.0", "schema": labeling_config(backend.classes)})[0] == 200
        pool = sorted(backend.priority)

        def latency(keys: list[str]) -> list[float]:
            out = []
            for i, key in enumerate(keys):
                t = time.perf_counter()
                code, body = _call(url, "/predict", {"tasks": [_task(key, i)]})
                out.append(time.perf_counter() - t)
                assert code == 200 and "result" in body["results"][0], body
            return out

        live = latency((labelled * 3)[:30])
        cached = latency((pool * 3)[:30])

        sent = [(pool[i % len(pool)], 1000 + i % len(pool), 5000 + i) for i in range(args.webhooks)]
        codes: list[int] = []
        t = time.perf_counter()
        with ThreadPoolExecutor(8 + args.concurrent) as ex:
            preds = [ex.submit(_call, url, "/predict", {"tasks": [_task(k, i) for i, k in enumerate(labelled[:4])]})
                     for _ in range(args.concurrent)]
            hooks = [ex.submit(_call, url, "/webhook", _webhook(k, tid, aid, args.size)) for k, tid, aid in sent]
            codes = [f.result()[0] for f in preds + hooks]
        burst_s = time.perf_counter() - t
        with Project.open(project) as p:
            recorded = [r["annotation_id"] for r in p.tool_annotations()]
        lost = len({str(a) for _, _, a in sent} - set(recorded))
        doubled = len(recorded) - len(set(recorded))
        refresh_s = None
        if args.retrain_every:  # N answers on images not answered yet; the N-th starts a training
            backend.settings.retrain_every = args.retrain_every
            fresh = [k for k in pool if k not in {key for key, _, _ in sent}][:args.retrain_every]
            before = backend.trainings
            for i, key in enumerate(fresh):
                if i == len(fresh) - 1:
                    t = time.perf_counter()
                assert _call(url, "/webhook", _webhook(key, 90000 + i, 95000 + i, args.size))[0] == 201
            while backend.trainings == before and (backend.training or time.perf_counter() - t < 5):
                time.sleep(0.2)
            refresh_s = time.perf_counter() - t
            assert backend.trainings == before + 1, "the training failed (see the log above)"
        server.shutdown()
        server.server_close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def stats(xs: list[float]) -> dict:
        return {"median_s": statistics.median(xs), "p95_s": float(np.percentile(xs, 95)), "n": len(xs)}

    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": _cpu(),
        "torch_threads": torch.get_num_threads(), "settings": vars(args),
        "predict_live": stats(live), "predict_pool": stats(cached), "ranking_pass_s": ranking_s,
        "pool_images": len(pool), "nth_answer_to_fresh_scores_s": refresh_s, "model_version": backend.model_version,
        "burst": {"predict_calls": args.concurrent, "webhooks": args.webhooks, "seconds": burst_s,
                  "codes": {str(c): codes.count(c) for c in sorted(set(codes))}, "lost": lost, "doubled": doubled},
    }
    print(f"machine: {result['machine']}")
    print(f"predict, live forward at {args.image_size} px: median {result['predict_live']['median_s']:.3f} s, "
          f"p95 {result['predict_live']['p95_s']:.3f} s")
    print(f"predict, pool image (ranking pass): median {result['predict_pool']['median_s']:.4f} s, "
          f"p95 {result['predict_pool']['p95_s']:.4f} s")
    print(f"ranking pass (predict {len(pool)} pool images + rank): {ranking_s:.1f} s")
    print(f"burst: {args.concurrent} predicts + {args.webhooks} webhooks in {burst_s:.1f} s; codes "
          f"{result['burst']['codes']}; lost {lost}, doubled {doubled}")
    if refresh_s is not None:
        print(f"{args.retrain_every}-th new annotation -> retrained, pool re-ranked: {refresh_s:.1f} s "
              f"({len(pool)} pool images, {args.steps} steps)")
    out = Path(__file__).parent / "results" / "serve_latency.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
