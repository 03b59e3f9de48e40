"""``<run>/report/report.html``: ablation table, CMC curves per step, rank lists for sample
queries, the Tune plot, training curves per model, the run's configuration and stage timings.
PNGs are written next to it and embedded (base64), so the HTML is self-contained."""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

GREEN, RED, GREY = (40, 170, 60), (210, 40, 40), (150, 150, 150)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_cmc(ablation: list[dict[str, Any]], path: Path) -> Path:
    """CMC curve after each post-processing step."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in ablation:
        cmc = row["cmc"]
        ax.plot(range(1, len(cmc) + 1), [100 * c for c in cmc], marker=".", label=f"{row['step']} (mAP {100 * row['mAP']:.1f})")
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_title("CMC after each post-processing step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_training(histories: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """Per model: identity loss and validation mAP per epoch."""
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, hist in histories.items():
        ep = [h for h in hist if h["epoch"] >= 0]
        a1.plot([h["epoch"] for h in ep], [h.get("id", np.nan) for h in ep], marker=".", label=name)
        val = [h for h in hist if h.get("val_mAP") is not None]
        a2.plot([h["epoch"] for h in val], [100 * h["val_mAP"] for h in val], marker=".", label=name)
    a1.set(xlabel="epoch", ylabel="ID loss", title="training loss")
    a2.set(xlabel="epoch (-1 = initialisation)", ylabel="validation mAP (%)", title="validation mAP")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def rank_list_picture(root: Path, rankings, q_pids: dict[str, int], g_pids: dict[str, int],
                      path: Path, num_queries: int = 6, top: int = 10, size: int = 64, seed: int = 0) -> Path:
    """Query and its top-10 per row; true matches framed green, false red (grey: no label)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    rows = rankings.to_pylist()
    pick = sorted(rng.choice(len(rows), size=min(num_queries, len(rows)), replace=False).tolist())
    pad = 4
    canvas = Image.new("RGB", ((top + 1) * (size + pad) + pad * 3, len(pick) * (size + pad) + pad), "white")
    for r, i in enumerate(pick):
        row = rows[i]
        y = pad + r * (size + pad)
        cells = [(row["query_id"], None)] + [(g, g_pids.get(g, -1) == q_pids.get(row["query_id"], -2)
                                              if g_pids.get(g, -1) >= 0 else None) for g in row["gallery_ids"][:top]]
        for c, (image_id, match) in enumerate(cells):
            x = pad + c * (size + pad) + (pad * 2 if c else 0)
            im = Image.open(root / image_id).convert("RGB").resize((size, size))
            canvas.paste(im, (x, y))
            if c:
                color = GREY if match is None else GREEN if match else RED
                ImageDraw.Draw(canvas).rectangle([x, y, x + size - 1, y + size - 1], outline=color, width=3)
    canvas.save(path)
    return path


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'


def _table(rows: list[dict[str, Any]], first: str = "step") -> str:
    cols = ["mAP", "mAP@100", "rank-1", "rank-5", "rank-10", "mINP"]
    head = "".join(f"<th>{c}</th>" for c in [first, *cols])
    body = "".join("<tr><td>" + html.escape(r["step"]) + "</td>" +
                   "".join(f"<td>{100 * r[c]:.2f}</td>" if c in r else "<td></td>" for c in cols) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _pct(v: Any) -> str:
    return f"{100 * v:.1f}" if isinstance(v, (int, float)) and v == v else ""


def uda_section(summary: dict[str, Any]) -> str:
    """Stage 1 vs stage 2 on the test split, each stage-2 model's validation mAP, and the quality
    of every pseudo-labeller (``<run>/uda/summary.json``)."""
    out = []
    test = summary["test"]
    if test.get("stage1") and test.get("stage2"):
        out.append("<h3>Test split, same post-processing</h3><table><tr><th>stage</th><th>features only mAP</th>"
                   "<th>final mAP</th><th>final rank-1</th></tr>" +
                   "".join(f"<tr><td>{k}</td><td>{_pct(v[0]['mAP'])}</td><td>{_pct(v[-1]['mAP'])}</td>"
                           f"<td>{_pct(v[-1]['rank-1'])}</td></tr>" for k, v in test.items()) + "</table>")
    if summary["models"]:
        out.append("<h3>Stage-2 models</h3><table><tr><th>model</th><th>from</th><th>labels</th><th>images</th>"
                   "<th>classes</th><th>val mAP stage 1</th><th>val mAP stage 2</th></tr>" +
                   "".join(f"<tr><td>{html.escape(m['model'])}</td><td>{html.escape(m['source'])}</td>"
                           f"<td>{html.escape(m['method'])}</td><td>{m['images']}</td><td>{m['classes']}</td>"
                           f"<td>{_pct(m['val_mAP_stage1'])}</td><td>{_pct(m['val_mAP_stage2'])}</td></tr>"
                           for m in summary["models"]) + "</table>")
    else:
        out.append("<p>Stage 2 was skipped: no model had usable pseudo-labels.</p>")
    if summary["quality"] and "pair_precision" in summary["quality"][0]:
        out.append("<h3>Pseudo-label quality (test ground truth)</h3><table><tr><th>model</th><th>method</th>"
                   "<th>pair precision</th><th>pair recall</th><th>labelled</th><th>clusters</th>"
                   "<th>true ids</th></tr>" +
                   "".join(f"<tr><td>{html.escape(q['model'])}</td><td>{html.escape(q['method'])}"
                           f"{' (used)' if q['used'] else ''}</td><td>{_pct(q['pair_precision'])}</td>"
                           f"<td>{_pct(q['pair_recall'])}</td><td>{_pct(q['labelled_fraction'])}</td>"
                           f"<td>{q['num_clusters']}</td><td>{q['num_true_ids']}</td></tr>"
                           for q in summary["quality"]) + "</table>")
    return "".join(out)


def gallery_draws_section(result: dict[str, Any]) -> str:
    """VehicleID: mean and spread of the final metrics over the seeded gallery draws."""
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{_pct(v['mean'])}</td><td>{_pct(v['std'])}</td>"
                   f"<td>{_pct(v['min'])}</td><td>{_pct(v['max'])}</td></tr>" for k, v in result["summary"].items())
    return (f"<h2>Gallery draws (VehicleID protocol, {result['num_draws']} seeded draws)</h2><table><tr>"
            "<th>metric</th><th>mean</th><th>std</th><th>min</th><th>max</th></tr>" + rows + "</table>")


def recrop_section(summary: dict[str, Any]) -> str:
    """Re-crop (003 §3.1): heatmap boxes vs the fixed centre crop, IoU against the mask boxes."""
    m = summary["metrics"]
    rows = [{"split": k, "images": v["images"], "fallbacks (whole image)": v["fallbacks"],
             "mean box area": round(v["mean_box_area"], 3), "with mask box": v["with_mask_box"],
             "IoU heatmap box": "-" if v["iou_heatmap"] is None else round(v["iou_heatmap"], 3),
             f"IoU centre crop {m['centre_crop_ratio']}": "-" if v["iou_centre_crop"] is None
             else round(v["iou_centre_crop"], 3)} for k, v in m.items() if isinstance(v, dict)]
    return (f"<h2>Re-crop (003 §3.1): boxes of model {html.escape(summary['model'])}</h2><p>cropped copy: "
            f"<code>{html.escape(summary['root'])}</code></p><table><tr>"
            + "".join(f"<th>{html.escape(c)}</th>" for c in rows[0]) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
            + "</table>")


def write_report(run_dir: str | Path, manifest, results_name: str, config_yaml: str,
                 timings: dict[str, float]) -> Path:
    """Write ``<run>/report/report.html`` (+ PNGs) from what the run left on disk."""
    import pyarrow.parquet as pq

    from vreid.data import dataset_root, split_table

    run = Path(run_dir)
    out = run / "report"
    out.mkdir(parents=True, exist_ok=True)
    sections: list[str] = []
    res = run / "results" / results_name
    metrics = json.loads((res / "metrics.json").read_text())
    if metrics["ablation"]:
        sections.append("<h2>Ablation (test split)</h2>" + _table(metrics["ablation"]))
        sections.append("<h2>CMC per step</h2>" + _img(plot_cmc(metrics["ablation"], out / "cmc.png")))
    else:
        sections.append("<h2>Ablation</h2><p>No ground truth for the test split: the ranking was written "
                        "for submission only.</p>")
    if metrics.get("comparison"):
        sections.append("<h2>Re-ranking level comparison</h2><p>The same features through each variant of "
                        "<code>postprocess.comparison</code> (001 Table 1 in kind: image-level re-ranking, AF-TRR, "
                        "WF-TRR).</p>" + _table(metrics["comparison"], "variant"))
    if (res / "gallery_draws.json").is_file():
        sections.append(gallery_draws_section(json.loads((res / "gallery_draws.json").read_text())))
    pids = {}
    for split in ("query", "gallery"):
        t = split_table(manifest, split)
        pids[split] = dict(zip(t.column("image_id").to_pylist(), t.column("pid").to_pylist()))
    ranks = pq.read_table(res / "rankings.parquet")
    sections.append("<h2>Rank lists (query, then top-10; green = same vehicle, red = different)</h2>" +
                    _img(rank_list_picture(dataset_root(manifest), ranks, pids["query"], pids["gallery"],
                                           out / "rank_lists.png")))
    tune_png = next(iter(sorted((run / "tune").glob("*/scores.png"))), None) if (run / "tune").is_dir() else None
    if tune_png is not None:
        summary = json.loads((tune_png.parent / "summary.json").read_text())
        sections.append(f"<h2>Tune sweep</h2><p>{summary['num_trials']} trials, best {summary['metric']} "
                        f"{100 * summary['best_score']:.2f} (defaults {100 * summary['default_score']:.2f}) with "
                        f"<code>{html.escape(json.dumps(summary['best_params']))}</code></p>" + _img(tune_png))
    histories = {}
    for model_json in sorted((run / "models").glob("*/model.json")):
        histories[model_json.parent.name] = json.loads(model_json.read_text()).get("history", [])
    if histories:
        sections.append("<h2>Training</h2>" + _img(plot_training(histories, out / "training.png")))
    if (run / "uda" / "summary.json").is_file():
        sections.append("<h2>UDA stage 2 (pseudo-labels)</h2>" +
                        uda_section(json.loads((run / "uda" / "summary.json").read_text())))
    if (run / "recrop" / "summary.json").is_file():
        sections.append(recrop_section(json.loads((run / "recrop" / "summary.json").read_text())))
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.1f} s</td></tr>" for k, v in timings.items())
    sections.append(f"<h2>Timings per stage</h2><table>{rows}</table>")
    sections.append(f"<h2>Configuration</h2><pre>{html.escape(config_yaml)}</pre>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>vreid report</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}"
            "img{max-width:100%}pre{background:#f6f6f6;padding:1em;font-size:12px}</style></head><body>"
            f"<h1>vreid run report: {html.escape(str(run))}</h1>" + "".join(sections) + "</body></html>")
    tmp = out / f".report.html.tmp-{os.getpid()}"
    tmp.write_text(page)
    os.replace(tmp, out / "report.html")
    return out / "report.html"
