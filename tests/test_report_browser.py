"""report.html in a real browser: headless Chromium (Debian's `chromium`, installed by .ci/run)
driven over the DevTools protocol loads the report of a run; no console error or exception, every
picture decoded; the screenshot is kept under test-artifacts/ (or $VREID_TEST_ARTIFACTS)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vreid.data import split_table
from vreid.report import write_report

ARTIFACTS = Path(os.environ.get("VREID_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))
BROWSER_WAIT_S = 60  # bound on every DevTools reply and on the page load


def _run_dir(tmp: Path, manifest) -> Path:
    """What a finished run leaves for the report: results, rankings, a trained model's history."""
    q = split_table(manifest, "query").column("image_id").to_pylist()
    g = split_table(manifest, "gallery").column("image_id").to_pylist()
    res = tmp / "results" / "final"
    res.mkdir(parents=True)
    rows = [{"step": s, "mAP": m, "mAP@100": m, "rank-1": r, "rank-5": r, "rank-10": r, "mINP": m / 2,
             "cmc": [min(1.0, r + 0.05 * i) for i in range(10)]} for s, m, r in (("features", 0.4, 0.5),
                                                                              ("rerank", 0.5, 0.6))]
    comparison = [{**rows[-1], "step": n, "name": n} for n in ("image-level RR", "AF-TRR", "WF-TRR")]
    (res / "metrics.json").write_text(json.dumps({"name": "final", "ablation": rows, "final": rows[-1],
                                                  "comparison": comparison}))
    pq.write_table(pa.table({"query_id": q, "gallery_ids": [g[i % 7:i % 7 + 10] for i in range(len(q))]}),
                   res / "rankings.parquet")
    (tmp / "models" / "bot").mkdir(parents=True)
    history = [{"epoch": -1, "stage": "init", "val_mAP": 0.1}] + \
        [{"epoch": e, "stage": "stage1", "id": 3.0 - e, "val_mAP": 0.2 + 0.1 * e} for e in range(3)]
    (tmp / "models" / "bot" / "model.json").write_text(json.dumps({"history": history}))
    return tmp


async def _inspect(port: int, url: str, screenshot: bool = True) -> dict:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.put(f"http://127.0.0.1:{port}/json/new?about:blank") as resp:
            target = await resp.json(content_type=None)
        async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            ids = iter(range(1, 10 ** 6))
            events: list[dict] = []

            async def call(method: str, **params) -> dict:
                msg_id = next(ids)
                await ws.send_json({"id": msg_id, "method": method, "params": params})
                while True:
                    msg = await asyncio.wait_for(ws.receive_json(), BROWSER_WAIT_S)
                    if msg.get("id") == msg_id:
                        assert "error" not in msg, msg
                        return msg["result"]
                    events.append(msg)

            for domain in ("Page", "Runtime", "Log"):
                await call(f"{domain}.enable")
            await call("Page.navigate", url=url)
            while not any(e.get("method") == "Page.loadEventFired" for e in events):
                events.append(await asyncio.wait_for(ws.receive_json(), BROWSER_WAIT_S))
            pictures = await call("Runtime.evaluate", returnByValue=True, expression=(
                "Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, "
                "width: i.naturalWidth, height: i.naturalHeight}))"))
            shot = await call("Page.captureScreenshot", format="png", captureBeyondViewport=True) if screenshot else {}
            return {"events": events, "pictures": pictures["result"]["value"], "png": shot.get("data")}


def test_report_opens_in_headless_chromium(tmp_path, tiny_manifest):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "Debian's chromium package is needed (.ci/run installs it: apt-get install chromium)"
    run = _run_dir(tmp_path / "run", tiny_manifest)
    report = write_report(run, tiny_manifest, "final", "name: test\n", {"train": 1.0, "report": 0.5})
    profile = tmp_path / "profile"
    proc = subprocess.Popen([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                             f"--user-data-dir={profile}", "--window-size=1200,900", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(BROWSER_WAIT_S * 10):  # the browser writes its port when it is ready
            if port_file.is_file() and port_file.read_text().strip():
                break
            if proc.poll() is not None:
                pytest.fail(f"chromium exited with {proc.returncode} before opening its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        seen = asyncio.run(_inspect(port, report.resolve().as_uri()))
        # the same checks see a picture that does not decode (a damaged copy of the report)
        text = report.read_text()
        damaged = tmp_path / "damaged.html"
        damaged.write_text(text.replace('src="data:image/png;base64,', 'src="data:image/png;base64,AAAA', 1))
        bad = asyncio.run(_inspect(port, damaged.resolve().as_uri(), screenshot=False))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.write_bytes(base64.b64decode(seen["png"]))

    errors = [e for e in seen["events"] if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    assert not errors, errors
    pictures = seen["pictures"]
    assert {p["alt"] for p in pictures} == {"cmc.png", "rank_lists.png", "training.png"}
    assert all(p["complete"] and p["width"] > 0 and p["height"] > 0 for p in pictures), pictures
    assert [p["width"] for p in bad["pictures"]].count(0) == 1
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
