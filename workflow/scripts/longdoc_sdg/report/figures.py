"""The report's figures (matplotlib, PNG) and its summary page, drawn from `stats.json`.

The workflow asks only for the figures of stages that ran (longdoc_sdg.export.targets); a view
that still has no rows says so. Legends sit outside the axes, where they hide no bar.
"""

from __future__ import annotations

import html
from collections import defaultdict

from ..config import demo_source
from ..io import atomic_path, get_logger, write_text_atomic
from ..registry import stage_order
from . import benchmark

log = get_logger("report.figures")

# name -> (report category, title)
FIGURES = {
    "stage_yield": ("Yield", "Rows per stage: processed, ok, exported"),
    "failures": ("Yield", "Why rows failed, and what the export filters removed"),
    "question_types": ("Question mix", "Question types per QA stage"),
    "answer_formats": ("Question mix", "Answer formats next to MMLongBench-Doc"),
    "evidence_pages": ("Question mix", "Evidence pages per question"),
    "judge_scores": ("Quality", "Judge weighted quality scores"),
    "quality_scores": ("Quality", "Self-checked quality scores (anchored QA)"),
    "tokens": ("Cost", "Token usage per stage and model"),
    "page_classes": ("Pages", "Page classes next to MMLongBench-Doc's evidence sources"),
}
COLORS = {"rows": "#b0b7c3", "ok": "#3a9a5b", "failed": "#d1495b", "exported": "#2e6fba", "benchmark": "#444444"}
PALETTE = ("#2e6fba", "#e08e2b", "#3a9a5b", "#8e5bb5", "#d1495b", "#4bb3c4", "#a6761d", "#7f7f7f", "#c9b22f", "#1b9e77")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {"figure.dpi": 100, "font.size": 9, "axes.spines.top": False, "axes.spines.right": False, "axes.titlesize": 10}
    )
    return plt


def _stage_key(stage: str) -> tuple:
    """Pipeline order; judge rows (`judge/{qa_stage}`) after the stages, in their QA stage's order."""
    order = stage_order()
    judged, _, base = stage.rpartition("/")
    return (bool(judged), order.index(base) if base in order else len(order), stage)


def _no_data(ax, message: str) -> None:
    ax.set_axis_off()
    ax.text(
        0.5, 0.5, message, ha="center", va="center", fontsize=11, color="#666666", wrap=True, transform=ax.transAxes
    )


def _legend(ax, fontsize: int = 7) -> None:
    """A legend right of the axes (saved with bbox_inches='tight'), never over a bar."""
    ax.legend(fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)


def _label_bars(ax, bars, horizontal: bool = True) -> None:
    for bar in bars:
        value = bar.get_width() if horizontal else bar.get_height()
        if not value:
            continue
        if horizontal:
            ax.annotate(
                f"{int(value):,}",
                (value, bar.get_y() + bar.get_height() / 2),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
            )
        else:
            ax.annotate(
                f"{value:.0f}",
                (bar.get_x() + bar.get_width() / 2, value),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                fontsize=7,
            )


def fig_yield(stats: dict, plt):
    rows = sorted(stats["tables"]["stage_yield"], key=lambda r: _stage_key(r["stage"]))
    fig, ax = plt.subplots(figsize=(9, 0.45 * max(len(rows), 3) + 1.2))
    if not rows:
        _no_data(ax, "No stage output yet")
        return fig
    labels = [f"{r['stage']} ({r['unit']})" for r in rows]
    y = list(range(len(rows)))
    h = 0.27
    series = [
        ("rows", [r["rows"] or 0 for r in rows]),
        ("ok", [r["ok"] or 0 for r in rows]),
        ("exported", [r["exported"] or 0 for r in rows]),
    ]
    for i, (name, values) in enumerate(series):
        bars = ax.barh(
            [v + (i - 1) * h for v in y],
            values,
            height=h,
            color=COLORS[name],
            label={"rows": "processed", "ok": "ok", "exported": "exported (final dataset)"}[name],
        )
        _label_bars(ax, bars)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel("rows (seed: documents)")
    _legend(ax, fontsize=8)
    ax.set_title(FIGURES["stage_yield"][1])
    return fig


def _stacked(ax, data: dict[str, dict[str, int]], title: str, empty: str) -> None:
    stages = sorted(data, key=_stage_key)
    if not stages:
        _no_data(ax, empty)
        return
    keys = sorted({k for d in data.values() for k in d}, key=lambda k: -sum(d.get(k, 0) for d in data.values()))
    left = [0] * len(stages)
    for i, key in enumerate(keys):
        values = [data[s].get(key, 0) for s in stages]
        ax.barh(stages, values, left=left, color=PALETTE[i % len(PALETTE)], label=key)
        left = [a + b for a, b in zip(left, values)]
    for i, total in enumerate(left):
        ax.annotate(f"{total:,}", (total, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("rows")
    ax.set_title(title)
    _legend(ax, fontsize=7)


def fig_failures(stats: dict, plt):
    exported = bool(stats["totals"].get("exported"))
    fig, axes = plt.subplots(1, 2 if exported else 1, figsize=(13 if exported else 7, 4.2), squeeze=False)
    a1 = axes[0][0]
    failures: dict[str, dict[str, int]] = defaultdict(dict)
    for r in stats["tables"]["failure_reasons"]:
        failures[r["stage"]][r["reason"]] = r["rows"]
    drops: dict[str, dict[str, int]] = defaultdict(dict)
    for r in stats["tables"]["filter_drops"]:
        drops[r["stage"]][r["filter"]] = r["rows"]
    _stacked(a1, failures, "Failure reasons (failed rows)", "No failed rows")
    if exported:  # the filter panel only when the export ran
        _stacked(axes[0][1], drops, "Rows removed by the export filters", "No rows removed by the export filters")
    fig.tight_layout()
    return fig


def _grid(plt, n: int, width: float = 4.2, height: float = 3.0):
    cols = min(n, 3) or 1
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_axis_off()
    return fig, flat


def fig_question_types(stats: dict, plt):
    by_stage: dict[str, list[dict]] = defaultdict(list)
    for r in stats["tables"]["question_types"]:
        by_stage[r["stage"]].append(r)
    stages = sorted(by_stage, key=_stage_key)
    fig, axes = _grid(plt, max(len(stages), 1))
    if not stages:
        _no_data(axes[0], "No QA stage ran")
        return fig
    for ax, stage in zip(axes, stages):
        rows = sorted(by_stage[stage], key=lambda r: -r["ok_rows"])
        names = [r["question_type"] or "?" for r in rows]
        y = list(range(len(rows)))
        b1 = ax.barh([v - 0.2 for v in y], [r["ok_rows"] for r in rows], height=0.4, color=COLORS["ok"], label="ok")
        b2 = ax.barh(
            [v + 0.2 for v in y],
            [r["exported_rows"] for r in rows],
            height=0.4,
            color=COLORS["exported"],
            label="exported",
        )
        _label_bars(ax, b1)
        _label_bars(ax, b2)
        ax.set_yticks(y, names, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(stage)
        _legend(ax, fontsize=7)
    fig.suptitle(FIGURES["question_types"][1])
    fig.tight_layout()
    return fig


def _shares(rows: list[dict], key: str, column: str) -> tuple[dict[str, float], int]:
    total = sum(r[column] for r in rows)
    return ({r[key]: 100.0 * r[column] / total for r in rows} if total else {}), total


def fig_answer_formats(stats: dict, plt):
    by_stage: dict[str, list[dict]] = defaultdict(list)
    for r in stats["tables"]["answer_formats"]:
        by_stage[r["stage"]].append(r)
    stages = sorted(by_stage, key=_stage_key)
    formats = list(benchmark.ANSWER_FORMATS)
    fig, ax = plt.subplots(figsize=(10, 4.2))
    series = [(f"{benchmark.NAME} (n={benchmark.QUESTIONS})", benchmark.ANSWER_FORMATS, COLORS["benchmark"])]
    for i, stage in enumerate(stages):
        column = "exported_rows" if sum(r["exported_rows"] for r in by_stage[stage]) else "ok_rows"
        shares, n = _shares(by_stage[stage], "answer_format", column)
        series.append(
            (f"{stage} ({'exported' if column == 'exported_rows' else 'ok'}, n={n})", shares, PALETTE[i % len(PALETTE)])
        )
    width = 0.8 / len(series)
    for i, (label, shares, color) in enumerate(series):
        bars = ax.bar(
            [x + (i - (len(series) - 1) / 2) * width for x in range(len(formats))],
            [shares.get(f, 0.0) for f in formats],
            width=width,
            label=label,
            color=color,
        )
        if i == 0:
            _label_bars(ax, bars, horizontal=False)
    ax.set_xticks(range(len(formats)), [f if f != "None" else "None (not answerable)" for f in formats])
    ax.set_ylabel("% of questions")
    ax.set_title(FIGURES["answer_formats"][1])
    _legend(ax, fontsize=7)
    if not stages:
        ax.text(0.5, 0.9, "No QA stage ran: benchmark only", transform=ax.transAxes, ha="center", color="#666666")
    fig.tight_layout()
    return fig


def fig_evidence_pages(stats: dict, plt):
    rows = stats["tables"]["evidence_pages"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
    stages = sorted({r["stage"] for r in rows}, key=_stage_key)
    if not stages:
        _no_data(a1, "No QA stage ran")
    else:
        counts: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        for r in rows:
            if r["evidence_kind"] != "unanswerable":
                counts[r["stage"]][min(int(r["num_evidence_pages"]), 9)] += r["ok_rows"]
        xs = list(range(0, 10))
        width = 0.8 / len(stages)
        for i, stage in enumerate(stages):
            a1.bar(
                [x + (i - (len(stages) - 1) / 2) * width for x in xs],
                [counts[stage].get(x, 0) for x in xs],
                width=width,
                label=stage,
                color=PALETTE[i % len(PALETTE)],
            )
        a1.set_xticks(xs, [str(x) for x in xs[:-1]] + ["9+"])
        a1.set_xlabel("evidence pages per answerable question (ok rows)")
        a1.set_ylabel("questions")
        _legend(a1, fontsize=7)
        a1.set_title("Evidence pages per question")
    kinds = list(benchmark.EVIDENCE_PAGES)
    series = [(benchmark.NAME, benchmark.EVIDENCE_PAGES, COLORS["benchmark"])]
    for i, stage in enumerate(stages):
        column = "exported_rows" if sum(r["exported_rows"] for r in rows if r["stage"] == stage) else "ok_rows"
        agg: dict[str, int] = defaultdict(int)
        for r in rows:
            if r["stage"] == stage:
                agg[r["evidence_kind"]] += r[column]
        total = sum(agg.values())
        series.append(
            (stage, {k: 100.0 * v / total for k, v in agg.items()} if total else {}, PALETTE[i % len(PALETTE)])
        )
    width = 0.8 / len(series)
    for i, (label, shares, color) in enumerate(series):
        bars = a2.bar(
            [x + (i - (len(series) - 1) / 2) * width for x in range(len(kinds))],
            [shares.get(k, 0.0) for k in kinds],
            width=width,
            label=label,
            color=color,
        )
        if i == 0:
            _label_bars(a2, bars, horizontal=False)
    a2.set_xticks(range(len(kinds)), kinds)
    a2.set_ylabel("% of questions")
    _legend(a2, fontsize=7)
    a2.set_title("Single-page, cross-page, unanswerable vs the benchmark")
    fig.tight_layout()
    return fig


def fig_judge_scores(stats: dict, plt, bins: int = 20, threshold: float | None = None):
    by_stage: dict[str, list[dict]] = defaultdict(list)
    for r in stats["tables"]["judge_scores"]:
        by_stage[r["stage"]].append(r)
    stages = sorted(by_stage, key=_stage_key)
    rubric: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for r in stats["tables"]["judge_rubric"]:
        rubric[r["stage"]][r["criterion"]] += [r["score"]] * r["rows"]
    fig, axes = _grid(plt, len(stages) + 1 if stages else 1)
    if not stages:
        _no_data(axes[0], "The judge did not run")
        return fig
    edges = [i / bins for i in range(bins + 1)]
    for ax, stage in zip(axes, stages):
        values = [r["score"] for r in by_stage[stage] for _ in range(r["rows"])]
        kept = [r["score"] for r in by_stage[stage] for _ in range(r["exported_rows"])]
        ax.hist(values, bins=edges, color=COLORS["rows"], label=f"judged (n={len(values)})")
        ax.hist(kept, bins=edges, color=COLORS["exported"], label=f"exported (n={len(kept)})")
        if threshold is not None:
            ax.axvline(threshold, color=COLORS["failed"], linestyle="--", label=f"threshold {threshold}")
        ax.set_xlim(0, 1)
        ax.set_xlabel("weighted quality score")
        ax.set_title(stage)
        _legend(ax, fontsize=7)
    ax = axes[len(stages)]
    criteria = [
        c
        for c in (
            "answer_correctness",
            "training_signal_strength",
            "question_quality",
            "visual_grounding",
            "format_compliance",
        )
    ]
    width = 0.8 / len(stages)
    for i, stage in enumerate(stages):
        means = [sum(rubric[stage][c]) / len(rubric[stage][c]) if rubric[stage][c] else 0 for c in criteria]
        ax.bar(
            [x + (i - (len(stages) - 1) / 2) * width for x in range(len(criteria))],
            means,
            width=width,
            label=stage,
            color=PALETTE[i % len(PALETTE)],
        )
    ax.set_xticks(range(len(criteria)), [c.replace("_", "\n") for c in criteria], fontsize=7)
    ax.set_ylim(0, 5)
    ax.set_ylabel("mean score (0-5)")
    ax.set_title("Rubric means")
    _legend(ax, fontsize=6)
    fig.suptitle(FIGURES["judge_scores"][1])
    fig.tight_layout()
    return fig


def fig_quality_scores(stats: dict, plt):
    rows = stats["tables"]["quality_scores"]
    stages = sorted({r["stage"] for r in rows}, key=_stage_key)
    fig, ax = plt.subplots(figsize=(8, 3.8))
    if not stages:
        _no_data(ax, "No anchored QA stage (06-08) ran")
        return fig
    scores = [0, 1, 2]
    width = 0.8 / len(stages)
    for i, stage in enumerate(stages):
        counts = {r["quality_score"]: r for r in rows if r["stage"] == stage}
        xs = [x + (i - (len(stages) - 1) / 2) * width for x in range(len(scores))]
        bars = ax.bar(
            xs,
            [counts[s]["ok_rows"] if s in counts else 0 for s in scores],
            width=width,
            color=PALETTE[i % len(PALETTE)],
            alpha=0.45,
            label=f"{stage} ok",
        )
        _label_bars(ax, bars, horizontal=False)
        ax.bar(
            xs,
            [counts[s]["exported_rows"] if s in counts else 0 for s in scores],
            width=width * 0.5,
            color=PALETTE[i % len(PALETTE)],
            label=f"{stage} exported",
        )
    ax.set_xticks(range(3), ["0: a check failed", "1: all checks pass", "2: pass + high value"])
    ax.set_ylabel("rows")
    _legend(ax, fontsize=7)
    ax.set_title(FIGURES["quality_scores"][1])
    fig.tight_layout()
    return fig


def fig_tokens(stats: dict, plt):
    rows = sorted(stats["tables"]["tokens"], key=lambda r: (_stage_key(r["stage"]), r["model"]))
    rows = [r for r in rows if (r["prompt_tokens"] or r["completion_tokens"])]
    fig, ax = plt.subplots(figsize=(10, 0.45 * max(len(rows), 3) + 1.2))
    if not rows:
        _no_data(ax, "No model tokens spent (no model stage ran)")
        return fig
    labels = [f"{r['stage']}\n{r['model']}" for r in rows]
    prompt = [r["prompt_tokens"] for r in rows]
    reasoning = [r["reasoning_tokens"] for r in rows]
    answer = [max(r["completion_tokens"] - r["reasoning_tokens"], 0) for r in rows]
    ax.barh(labels, prompt, color=PALETTE[0], label="prompt")
    ax.barh(labels, answer, left=prompt, color=PALETTE[1], label="completion (answer)")
    left = [a + b for a, b in zip(prompt, answer)]
    ax.barh(labels, reasoning, left=left, color=PALETTE[3], label="completion (reasoning)")
    for i, r in enumerate(rows):
        total = r["prompt_tokens"] + r["completion_tokens"]
        ax.annotate(
            f"{total:,} ({r['rows']:,} rows)",
            (total, i),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=7,
        )
    ax.tick_params(axis="y", labelsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("tokens")
    _legend(ax, fontsize=7)
    ax.set_title(FIGURES["tokens"][1])
    fig.tight_layout()
    return fig


def fig_page_classes(stats: dict, plt):
    rows = stats["tables"]["page_classes"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
    if not rows:
        _no_data(a1, "Page classification (stage 04) did not run")
        _no_data(a2, "")
        return fig
    total = stats["totals"].get("pages_classified") or 0
    rows = sorted(rows, key=lambda r: -r["pages"])
    bars = a1.barh(
        [r["category"] for r in rows],
        [100.0 * r["pages"] / total if total else 0 for r in rows],
        color=[COLORS["benchmark"] if r["category"] == "NONE" else PALETTE[0] for r in rows],
    )
    for bar, r in zip(bars, rows):
        a1.annotate(
            f"{r['pages']:,}",
            (bar.get_width(), bar.get_y() + bar.get_height() / 2),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=7,
        )
    a1.invert_yaxis()
    a1.set_xlabel(f"% of {total:,} classified pages (a page may have up to 3 classes)")
    a1.set_title("Page classes")
    sources = list(benchmark.EVIDENCE_SOURCES)
    ours = {r["evidence_source"]: r["pages"] for r in stats["tables"]["page_sources"]}
    width = 0.38
    a2.bar(
        [x - width / 2 for x in range(len(sources))],
        [benchmark.EVIDENCE_SOURCES[s] for s in sources],
        width=width,
        color=COLORS["benchmark"],
        label=f"{benchmark.NAME} evidence sources",
    )
    a2.bar(
        [x + width / 2 for x in range(len(sources))],
        [100.0 * ours.get(s, 0) / total if total else 0 for s in sources],
        width=width,
        color=PALETTE[0],
        label="classified pages (this run)",
    )
    a2.set_xticks(range(len(sources)), sources)
    a2.set_ylabel("%")
    _legend(a2, fontsize=7)
    a2.set_title("Page classes as evidence sources (layout has no page class)")
    fig.tight_layout()
    return fig


DRAW = {
    "stage_yield": fig_yield,
    "failures": fig_failures,
    "question_types": fig_question_types,
    "answer_formats": fig_answer_formats,
    "evidence_pages": fig_evidence_pages,
    "judge_scores": fig_judge_scores,
    "quality_scores": fig_quality_scores,
    "tokens": fig_tokens,
    "page_classes": fig_page_classes,
}


def draw_figures(stats: dict, outputs: dict[str, str], params: dict | None = None) -> None:
    """Write every figure named in `outputs` (name -> PNG path)."""
    params = params or {}
    plt = _plt()
    for name, path in outputs.items():
        if name == "judge_scores":
            fig = fig_judge_scores(
                stats, plt, bins=int(params.get("judge_score_bins", 20)), threshold=params.get("min_judge_score")
            )
        else:
            fig = DRAW[name](stats, plt)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        log.info("figure %s -> %s", name, path)


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape('' if v is None else f'{v:,}' if isinstance(v, int) else str(v))}</td>" for v in row
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def summary_html(stats: dict, demo: bool | str = False) -> str:
    """A one-page summary: yield per stage (the numbers behind the yield figure), totals, and
    where the export is (only when one ran)."""
    totals = stats["totals"]
    yield_rows = sorted(stats["tables"]["stage_yield"], key=lambda r: _stage_key(r["stage"]))
    tokens: dict[str, int] = defaultdict(int)
    for r in stats["tables"]["tokens"]:
        tokens[r["stage"]] += r["prompt_tokens"] + r["completion_tokens"]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>longdoc-sdg run summary</title>",
        "<style>body{font-family:sans-serif;font-size:14px;margin:1.5em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
        "</style></head><body>",
        "<h2>longdoc-sdg run summary</h2>",
        *(
            [
                "<p style='background:#fff3cd;border:2px solid #d39e00;padding:.6em'><b>DEMO DATA</b>: made by "
                f"<code>longdoc-sdg demo</code>, the answers from {html.escape(demo_source(demo))}; not training "
                "data.</p>"
            ]
            if demo
            else []
        ),
        f"<p id='totals'>Documents listed: <b>{totals.get('documents_listed', 0):,}</b>, seeded: "
        f"<b>{totals.get('documents_seeded', 0):,}</b>, failed: <b>{totals.get('documents_failed', 0):,}</b>; "
        f"pages: <b>{totals.get('pages', 0):,}</b>. Generated {html.escape(stats.get('generated', ''))}.</p>",
        "<h3>Yield per stage</h3>",
        _table(
            ["stage", "unit", "rows", "ok", "failed", "exported", "train", "validation", "tokens"],
            [
                [
                    r["stage"],
                    r["unit"],
                    r["rows"],
                    r["ok"],
                    r["failed"],
                    r["exported"],
                    r["train"],
                    r["validation"],
                    tokens.get(r["stage"]),
                ]
                for r in yield_rows
            ],
        ),
    ]
    layers = stats["tables"].get("text_layers") or []
    if layers:
        parts += [
            f"<h3>Text layer of the OCR pages</h3><p id='text-layers'>Pages without a text layer (scanned or "
            f"image-only): <b>{totals.get('pages_without_text_layer', 0):,}</b>.</p>",
            _table(
                ["text layer", "OCR engine", "pages", "with text after OCR"],
                [[r["text_layer"], r["ocr_engine"], r["pages"], r["with_text"]] for r in layers],
            ),
        ]
    resolution = [
        r
        for r in sorted(stats["tables"].get("image_resolution") or [], key=lambda r: _stage_key(r["stage"]))
        if r["rows_with_images"] or r["context_too_long"]
    ]
    if resolution:
        parts += [
            "<h3>Image resolution sent per stage</h3><p id='image-resolution'>Pages are downscaled on the client "
            "when a request would not fit the model's max_model_len; rows that cannot fit even at the floor "
            "resolution fail as <code>context_too_long</code> without being sent.</p>",
            _table(
                [
                    "stage",
                    "rows with images",
                    "downscaled",
                    "context_too_long",
                    "median px / image",
                    "min px / image",
                    "mean scale",
                    "min scale",
                    "max est. prompt tokens",
                ],
                [
                    [
                        r["stage"],
                        r["rows_with_images"],
                        r["downscaled_rows"],
                        r["context_too_long"],
                        r["median_image_pixels"],
                        r["min_image_pixels"],
                        r["mean_image_scale"],
                        r["min_image_scale"],
                        r["max_est_prompt_tokens"],
                    ]
                    for r in resolution
                ],
            ),
        ]
    exported = totals.get("exported") or {}
    if exported:
        drops = stats["tables"]["filter_drops"]
        parts.append("<h3>Rows removed by the export filters</h3>")
        parts.append(
            _table(["stage", "filter", "rows"], [[r["stage"], r["filter"], r["rows"]] for r in drops])
            if drops
            else "<p>The export filters removed no ok row.</p>"
        )
        parts.append(
            "<h3>Export</h3><p>Final datasets per QA stage: <code>export/datasets/</code> "
            f"({', '.join(f'{html.escape(s)} {n:,}' for s, n in exported.items())} rows); layouts under "
            "<code>export/</code> (<code>reference/</code>, <code>hub/</code> with its dataset card).</p>"
        )
    else:
        parts.append("<p>No export ran (no QA stage ran, or export.enabled is false).</p>")
    agreement = sorted(
        stats["tables"].get("verify_agreement") or [], key=lambda r: (_stage_key(r["stage"]), r["question_type"])
    )
    if agreement:
        parts += [
            "<h3>Verify: independent answers that agree with the generated one</h3>",
            _table(
                ["stage", "question type", "format", "verified", "agreeing", "agreement", "mean score"],
                [
                    [
                        r["stage"],
                        r["question_type"],
                        r["benchmark_format"],
                        r["verified_rows"],
                        r["agreeing_rows"],
                        f"{r['agreeing_rows'] / r['verified_rows']:.0%}" if r["verified_rows"] else "",
                        f"{r['mean_verify_score']:.2f}",
                    ]
                    for r in agreement
                ],
            ),
        ]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_summary(stats: dict, path: str, demo: bool | str = False) -> None:
    write_text_atomic(path, summary_html(stats, demo))


__all__ = ["FIGURES", "draw_figures", "summary_html", "write_summary"]
