"""The audit's report: a Markdown table and a self-contained HTML page with matplotlib plots.

Plots: epsilon per round per client, the distribution of final client epsilons, the server's
user-level epsilon over rounds, and the canary score histograms (included vs excluded). The
PNGs are embedded as base64 so the page is one file an auditor can archive.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

from server.audit.limits import limits_of


@dataclass
class AuditReport:
    run_dir: Path
    failures: dict[str, list[str]] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    figures: dict[str, object] = field(default_factory=dict)
    # Series for the report's plots.
    client_epsilons: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    server_epsilons: list[tuple[int, float]] = field(default_factory=list)
    canary_scores: dict[str, list[float]] = field(default_factory=dict)
    # Checks that ran but could not have failed at the claim: never shown as a pass.
    inconclusive: dict[str, str] = field(default_factory=dict)
    # What the run claims, first in the report: unit, epsilon, delta, whom you must trust.
    guarantee: dict[str, object] = field(default_factory=dict)
    release_names: list[str] = field(default_factory=list)  # the x axis of a user-level run's epsilon plot
    # What the run's mechanism says its own checks see and cannot see (server.mechanisms).
    limits: dict[str, tuple[str, str]] = field(default_factory=dict)

    def limits_of(self, check: str) -> tuple[str, str]:
        """(what ``check`` verifies, what it cannot see): the mechanism's word, else the audit's."""
        return self.limits.get(check) or limits_of(check)

    @property
    def passed(self) -> bool:
        return not any(self.failures.values())

    def fail(self, check: str, problem: str) -> None:
        self.failures.setdefault(check, []).append(problem)

    def ok(self, check: str) -> None:
        self.failures.setdefault(check, [])


def _result(problems: list[str], limit: int) -> str:
    return "pass" if not problems else "FAIL: " + "; ".join(problems[:limit])


def to_markdown(report: AuditReport) -> str:
    """The guarantee first, then each check with what it can and cannot see, then the evidence."""
    lines = [f"# Privacy audit of `{report.run_dir}`", "", f"**Result: {'PASS' if report.passed else 'FAIL'}**", ""]
    lines += ["## The guarantee", "", "| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in report.guarantee.items()]
    lines += ["", "## Checks", "", "| check | result | what it verifies | what it cannot see |", "| --- | --- | --- | --- |"]
    for check, problems in report.failures.items():
        sees, blind = report.limits_of(check)
        lines.append(f"| {check} | {_result(problems, 5)} | {sees} | {blind} |")
    for check, why in report.inconclusive.items():
        sees, blind = report.limits_of(check)
        lines.append(f"| {check} | {why} | {sees} | {blind} |")
    lines += ["", "## Evidence", "", "| figure | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in report.figures.items()]
    if report.flags:
        lines += ["", "Flags:", *[f"- {flag}" for flag in report.flags[:20]]]
        if len(report.flags) > 20:
            lines.append(f"- ... and {len(report.flags) - 20} more")
    return "\n".join(lines) + "\n"


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def plots(report: AuditReport) -> dict[str, str]:
    """Title -> base64 PNG, for each plot the run has data for."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    if report.client_epsilons:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for series in report.client_epsilons.values():
            rounds, eps = zip(*series)
            ax.plot(rounds, eps, marker=".", linewidth=0.7, alpha=0.6)
        ax.set(xlabel="round", ylabel="cumulative epsilon", title="Example-level epsilon per client")
        out["Epsilon per round per client"] = _png(fig)
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist([series[-1][1] for series in report.client_epsilons.values()], bins=20)
        ax.set(xlabel="final epsilon", ylabel="clients", title="Final client epsilons")
        out["Distribution of final client epsilons"] = _png(fig)
        plt.close(fig)
    if report.server_epsilons:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        rounds, eps = zip(*report.server_epsilons)
        ax.plot(rounds, eps, marker="o")
        ax.set_xticks(rounds)  # whole rounds, never quarter rounds
        if len(report.release_names) == len(rounds):
            ax.set_xticklabels(report.release_names)
            ax.set(xlabel="release", ylabel="user-level epsilon", title="User-level epsilon after each release")
        else:
            ax.set(xlabel="round", ylabel="user-level epsilon", title="Server (central DP) epsilon")
        out["Server epsilon over rounds"] = _png(fig)
        plt.close(fig)
    if report.canary_scores:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(report.canary_scores["excluded"], bins=30, alpha=0.6, label="excluded canaries")
        ax.hist(report.canary_scores["included"], bins=30, alpha=0.6, label="included canaries")
        ax.set(xlabel="projection of the model change on the canary", ylabel="canaries", title="Canary scores")
        ax.legend()
        out["Canary score histograms"] = _png(fig)
        plt.close(fig)
    return out


def to_html(report: AuditReport) -> str:
    verdict = "PASS" if report.passed else "FAIL"

    def row(*cells: object) -> str:
        return "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"

    guarantee = "".join(row(k, v) for k, v in report.guarantee.items())
    rows = "".join(row(k, v) for k, v in report.figures.items())
    checks = "<tr><th>check</th><th>result</th><th>what it verifies</th><th>what it cannot see</th></tr>" + "".join(
        f"<tr><td>{html.escape(c)}</td><td class={'ok' if not p else 'bad'}>{html.escape(_result(p, 10))}</td>"
        + "".join(f"<td>{html.escape(t)}</td>" for t in report.limits_of(c)) + "</tr>"
        for c, p in report.failures.items()
    ) + "".join(row(c, w, *report.limits_of(c)) for c, w in report.inconclusive.items())
    flags = "".join(f"<li>{html.escape(f)}</li>" for f in report.flags[:50])
    images = "".join(
        f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>"
        for title, data in plots(report).items()
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Privacy audit</title><style>"
        "body{font-family:sans-serif;max-width:60em;margin:2em auto}td{border:1px solid #ccc;padding:.3em}"
        "table{border-collapse:collapse}.ok{color:#060}.bad{color:#a00;font-weight:bold}</style></head><body>"
        f"<h1>Privacy audit of {html.escape(str(report.run_dir))}</h1>"
        f"<p class={'ok' if report.passed else 'bad'}>Result: {verdict}</p>"
        f"<h2>The guarantee</h2><table>{guarantee}</table><h2>Checks</h2><table>{checks}</table>"
        f"<h2>Evidence</h2><table>{rows}</table>"
        f"{'<h2>Flags</h2><ul>' + flags + '</ul>' if flags else ''}{images}</body></html>\n"
    )
