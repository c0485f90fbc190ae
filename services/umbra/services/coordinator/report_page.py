"""The report's page: one self-contained HTML file (inline CSS, charts and faces as data URIs, alt text on every
image, tables with scoped headers) written from the report's JSON, and its PDF printed by WeasyPrint.

    page = render(report, faces, policy)     # str; every name from the tenant is escaped
    data = pdf(page)                         # bytes, or None when WeasyPrint cannot load (logged)

No internal metric name reaches the page: figures carry their plain names (umbra.privacy.policy.NAMES), their
meaning (MEANINGS), and their 95% interval; ε is rounded up.
"""

from __future__ import annotations

import base64
import html
import logging
import math
from datetime import datetime, timezone

from umbra.privacy.policy import EPSILON, MEANINGS, Figures, Policy, percent
from umbra.services.coordinator import report_charts
from umbra.privacy.policy import epsilon_text

log = logging.getLogger(__name__)
e = html.escape
ANSWERS = {"accept": "accepted", "more": "more privacy", "less": "less privacy", "": "not answered"}
STYLE = """
@page{size:A4;margin:14mm 14mm 16mm}
body{font-family:"DejaVu Sans",Verdana,sans-serif;color:#1a1a1a;background:#fff;margin:2em auto;max-width:62em;
line-height:1.45;font-size:11pt;padding:0 1em}
@media print{body{margin:0;max-width:none;padding:0;font-size:9.5pt}}
h1{font-size:1.6em;margin:0 0 .2em}h2{font-size:1.25em;margin:1.6em 0 .4em;border-bottom:2px solid #1a1a1a}
.meta,.meaning,.note{color:#444}.meaning{font-size:.88em;font-weight:normal;display:block}
table{border-collapse:collapse;width:100%;margin:.5em 0}caption{text-align:left;font-weight:bold;padding:.3em 0}
th,td{border:1px solid #8a8a8a;padding:.3em .5em;text-align:left;vertical-align:top}
thead th{background:#ececec}td.num{text-align:right;white-space:nowrap}
.verdict{font-size:1.2em;padding:.6em .8em;border:3px solid;border-radius:4px}
.met{color:#0b5d1e}.missed{color:#a40e26}.uncertain{color:#7a4a00}
p.verdict.met{background:#e6f4ea}p.verdict.missed{background:#fde7ea}p.verdict.none{background:#f0f0f0;color:#1a1a1a}
td.met,td.missed{font-weight:bold}
.faces{display:flex;flex-wrap:wrap;gap:.8em}
figure.face{margin:0 0 .8em;border:1px solid #8a8a8a;padding:.5em;width:27em;max-width:100%;break-inside:avoid;
display:inline-block;vertical-align:top;box-sizing:border-box}
figure.face img{width:96px;height:96px;image-rendering:pixelated;margin-right:.4em}
figure.face table{font-size:.85em;table-layout:fixed;overflow-wrap:anywhere}
figure.face th,figure.face td{padding:.2em .3em}tr.flag td,tr.flag th{background:#fde7ea;color:#a40e26;font-weight:bold}
img.chart{max-width:100%;height:auto}figure{margin:.6em 0}figcaption{color:#444}
"""


def _faces_behind(faces: int) -> str:
    return f", on {faces} faces" if faces else ""


def _limit(c: dict) -> str:
    return f"{c['comparison']} {epsilon_text(c['limit']) if c['name'] == EPSILON else percent(c['limit'])}"


def _img(data: bytes, alt: str, css: str = "", size: int = 0) -> str:
    dims = f' width="{size}" height="{size}"' if size else ""
    return (f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}" alt="{e(alt)}"'
            f'{f" class={chr(34)}{css}{chr(34)}" if css else ""}{dims}>')


def _delta(delta: float) -> str:
    """δ as "1.1 × 10⁻⁶", rounded up."""
    if delta <= 0:
        return "0"
    exponent = math.floor(math.log10(delta))
    mantissa = math.ceil(delta / 10 ** exponent * 10 - 1e-9) / 10
    if mantissa >= 10:
        mantissa, exponent = 1.0, exponent + 1
    return f"{mantissa:.1f} × 10{str(exponent).translate(str.maketrans('-0123456789', '⁻⁰¹²³⁴⁵⁶⁷⁸⁹'))}"


def _result(c: dict) -> str:
    state = "met" if c["met"] else "missed"
    unsure = "" if c["certain"] else ('<br><span class="uncertain">uncertain: the 95% interval crosses the '
                                      'limit</span>')
    return f'<td class="{state}">{state.capitalize()}{unsure}</td>'


def _verdict(report: dict) -> str:
    criteria = report["verdict"]["criteria"]
    if not criteria:
        return ('<p class="verdict none"><strong>No policy was set: judge the figures below.</strong></p>'
                '<p>The job named no limits to check the release against.</p>')
    missed = [c for c in criteria if not c["met"]]
    unsure = sum(not c["certain"] for c in criteria)
    head = ("Release meets the policy" if not missed else
            f"Release does not meet the policy: {len(missed)} of {len(criteria)} criteria missed")
    caveat = (f" {unsure} of the {len(criteria)} verdicts {'is' if unsure == 1 else 'are'} uncertain: the 95% "
              "interval crosses the limit, so a larger sample could overturn it." if unsure else "")
    rows = "".join(
        f'<tr><th scope="row">{e(c["title"])}<span class="meaning">{e(MEANINGS[c["name"]])}</span></th>'
        f"<td>{e(c['figure'])}{_faces_behind(c['faces'])}</td><td>{e(_limit(c))}</td>{_result(c)}</tr>"
        for c in criteria)
    return (f'<p class="verdict {"missed" if missed else "met"}"><strong>{head}.</strong>{e(caveat)}</p>'
            '<table><caption>The policy, criterion by criterion</caption><thead><tr><th scope="col">Criterion</th>'
            '<th scope="col">Measured (95% interval)</th><th scope="col">Limit</th><th scope="col">Result</th>'
            f"</tr></thead><tbody>{rows}</tbody></table>")


def _figures(report: dict) -> str:
    rows = "".join(
        f'<tr><th scope="row">{e(f["title"])}</th><td>{e(f["text"])}{_faces_behind(f["faces"])}</td>'
        f'<td>{e(f["meaning"])}{f" {e(x)}" if (x := f.get("detail")) else ""}</td></tr>' for f in report["figures"])
    skipped = "".join(f"<li>{e(name.replace('_', ' '))}: {e(str(why))}</li>"
                      for name, why in report["evaluation_skipped"].items())
    return ("<p>Measured on the released test faces, each against the originals. A share comes with its 95% "
            "interval: the range the true figure lies in, given how few faces it was measured on.</p>"
            + (f'<table><thead><tr><th scope="col">Figure</th><th scope="col">Measured (95% interval)</th>'
               f'<th scope="col">What it means</th></tr></thead><tbody>{rows}</tbody></table>' if rows else
               "<p><strong>The release was not measured.</strong></p>")
            + (f"<p>Not measured:</p><ul>{skipped}</ul>" if skipped else ""))


def _privacy(report: dict) -> str:
    parts = {"previews": "Preview rounds", "dataset": "Released dataset", "generator": "Generator's training",
             "total": "Total: the guarantee for a person"}
    rows = "".join(f'<tr{" class=total" if name == "total" else ""}><th scope="row">{label}</th>'
                   f'<td class="num">{epsilon_text(cost["epsilon"])}</td><td class="num">{_delta(cost["delta"])}</td>'
                   f'<td>{e(cost.get("description", ""))}</td></tr>'
                   for name, label in parts.items() if (cost := report["privacy"].get(name)))
    total, budget = report["privacy"].get("total"), report.get("budget") or {}
    spent = (f" The job's budget was ε {epsilon_text(budget['epsilon'])}; it spent ε {epsilon_text(total['epsilon'])}."
             if total and budget.get("epsilon") else "")
    chart = ""
    rounds = [r for r in report["rounds"] if r["epsilon_charged"] is not None]
    if rounds:
        png, alt = report_charts.epsilon_chart(
            rounds=[r["round"] for r in rounds], per_round=[r["epsilon_charged"] for r in rounds],
            cumulative=report["epsilon_so_far"], total=total["epsilon"] if total else None,
            budget=budget.get("epsilon") or None)
        chart = f"<figure>{_img(png, alt, 'chart')}<figcaption>ε of each round and of the job so far.</figcaption>" \
                "</figure>"
    return ("<p>A person whose face is in the dataset is touched by every preview round, by the released dataset "
            "and by the generator's training, so their losses of privacy add up: the total below is that person's "
            "guarantee (composed as the privacy ledger composes it, never looser than the plain sum). ε bounds how "
            "much anyone can learn about the person (lower is stronger, shown rounded up) and δ is the small chance "
            f"that the bound fails.{spent}</p>"
            '<table><thead><tr><th scope="col">Part</th><th scope="col">ε (rounded up)</th><th scope="col">δ</th>'
            f'<th scope="col">What it covers</th></tr></thead><tbody>{rows}</tbody></table>{chart}')


def _rounds(report: dict, policy: Policy) -> str:
    measured = [(r["round"], r["intensity"], Figures.of_round(r["risk"], r["faces"], None))
                for r in report["rounds"] if r["risk"]]
    chart = report_charts.risk_chart(measured, policy)
    figure = (f"<figure>{_img(chart[0], chart[1], 'chart')}<figcaption>Risk and usefulness of each round's preview "
              "against its intensity.</figcaption></figure>" if chart else "")

    def judged(r: dict) -> str:
        criteria = r["criteria"]
        return f"{sum(bool(c.get('met')) for c in criteria)} of {len(criteria)}" if criteria else "—"

    rows = "".join(
        f'<tr><th scope="row">{r["round"]}</th><td class="num">{r["intensity"]:.2f}</td>'
        f'<td>{e(ANSWERS.get(r["feedback"], r["feedback"]))}</td>'
        f'<td class="num">{epsilon_text(r["epsilon_charged"]) if r["epsilon_charged"] is not None else "—"}</td>'
        f'<td>{e(", ".join(r["flagged"])) or "none"}</td><td>{e(r["reidentification"] or "not measured")}</td>'
        f'<td class="num">{judged(r)}</td></tr>' for r in report["rounds"])
    return (f"<p>Each round showed {report['rounds'][0]['faces'] if report['rounds'] else 0} faces anonymized at "
            "one intensity (0: least privacy, 1: most) and was answered: accepted, or asked for more or less "
            "privacy. A round's ε is what its preview cost; the generator's share is counted once, in the table "
            "above.</p>" + figure +
            '<table><thead><tr><th scope="col">Round</th><th scope="col">Intensity</th><th scope="col">Answer</th>'
            '<th scope="col">ε of the round</th><th scope="col">Faces flagged</th>'
            '<th scope="col">Re-identification (95% interval)</th><th scope="col">Criteria met*</th></tr></thead>'
            f"<tbody>{rows}</tbody></table><p class=\"note\">* The policy's risk and usefulness limits, judged on "
            "the round's preview faces; its ε limit is judged on the release.</p>")


def _value(value) -> str:
    if value is None:
        return "—"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _faces(faces: list[dict]) -> str:
    if not faces:
        return "<p>No round was accepted, so no faces are shown.</p>"
    out = []
    for face in faces:
        rows = []
        for a in face["attributes"]:
            if a["flagged"]:
                status = "CHANGED: should have been kept"
            elif a["kind"] == "kept":
                status = "kept"
            else:
                status = "changed (protected)" if a["changed"] else "unchanged (protected)"
            rows.append(f'<tr{" class=flag" if a["flagged"] else ""}><th scope="row">'
                        f'{e(a["attribute"].replace("_", " "))}</th><td>{e(_value(a["true"]))}</td>'
                        f'<td>{e(_value(a["released"]))}</td><td>{status}</td></tr>')
        key = face["key"]
        table = ('<table><thead><tr><th scope="col">Attribute</th><th scope="col">True</th><th scope="col">Released'
                 f'</th><th scope="col">Status</th></tr></thead><tbody>{"".join(rows)}</tbody></table>' if rows else "")
        original = _img(face["original"], f"Original face of sample {key}", size=96) if face["original"] else \
            "<span>(original not found)</span>"
        released = _img(face["released_image"], f"Released face of sample {key}", size=96)
        out.append(f'<figure class="face"><div>{original}{released}</div>'
                   f"<figcaption>Sample {e(key)}: original (left), released (right)</figcaption>{table}</figure>")
    flagged = sum(a["flagged"] for face in faces for a in face["attributes"])
    warning = (f'<p class="missed"><strong>{flagged} kept attribute value(s) changed</strong> in the faces below '
               "(rows marked CHANGED).</p>" if flagged else "")
    return (f"<p>The accepted round's faces: each original beside its released face, with the true and released "
            f"value of every protected and kept attribute.</p>{warning}<div class=\"faces\">{''.join(out)}</div>")


def _seconds(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _model(report: dict) -> str:
    out = []
    if u := report.get("unlearning"):
        removed = f", {n} removed" if (n := u.get("removed_samples")) else ""
        took = f" in {_seconds(u['seconds'])}" if u.get("seconds") else ""
        text = (f"The model {e(str(u.get('model', '')))} was updated to version {e(str(u.get('version', '')))} to "
                f"the released images by feature unlearning ({e(str(u.get('method', '')))} step) instead of being "
                f"trained again{took}: {u['changed_samples']} training samples changed{removed}, and its loss on the "
                f"revised training data went from {u['loss_before']:.3g} to {u['loss_after']:.3g} (lower fits "
                "better).")
        if u.get("second_order_refused"):
            text += (f" The second-order step was refused ({e(u['second_order_refused'])}), so a first-order step "
                     "was used.")
        if u.get("outside_original_privacy_guarantee"):
            text += (" The original model was trained with differential privacy; its ε does not cover this "
                     "update.")
        out.append(f"<p>{text}</p>")
        if v := u.get("verification"):
            out.append(
                f"<p>To check the update, a model was also retrained from scratch on the released images. On "
                f"{v.get('test_count', 0)} test faces, the original model is right {percent(v['accuracy_original'])} "
                f"of the time, the updated one {percent(v['accuracy_unlearned'])} and the retrained one "
                f"{percent(v['accuracy_retrained'])}; the updated model gives the same answer as the retrained one "
                f"on {percent(v['agreement_with_retrained'])} of them. Retraining took "
                f"{_seconds(v.get('retrain_seconds', 0.0))}.</p>")
    if d := report.get("distortion"):
        kind = "AugMDP" if d["copies"] > 1 else "MDP"
        dataset = report["dataset"]["source"].split("/versions/")[0]
        out.append(f"<p>{kind} of the released training split, {e(dataset)}/versions/{e(str(d['version']))}: "
                   f"{d['copies']} released image(s) per training image, the label {e(str(d['label']))} kept while "
                   f"which image it belongs to is hidden; mean feature-matching loss "
                   f"{d.get('feature_loss', 0):.3g}.</p>")
    return "".join(out)


def _generator(report: dict) -> str:
    g = report["generator"]
    if not g.get("model"):
        return ""
    made = ("trained by this job on this dataset (its ε is in the privacy table)" if g.get("trained_by_job") else
            "named by the job or reused; its ε was charged when it was trained")
    return (f"<p>The released faces were made by the generator {e(str(g['model']))}/versions/"
            f"{e(str(g.get('version', '')))}, {made}.</p>")


def render(report: dict, faces: list[dict], policy: Policy) -> str:
    """The page of `report` (the JSON's content), with `faces` (the accepted round's, images included)."""
    d = report["dataset"]
    finished = (f", finished {datetime.fromtimestamp(report['finished'], timezone.utc):%Y-%m-%d %H:%M} UTC"
                if report.get("finished") else "")
    model = _model(report)
    sections = [
        ("verdict", "Verdict: may this release go out?", _verdict(report)),
        ("figures", "What the release gives away and keeps", _figures(report)),
        ("privacy", "Privacy guarantee", _privacy(report) + _generator(report)),
        ("rounds", "How the intensity was chosen", _rounds(report, policy)),
        ("faces", "Faces: originals beside released", _faces(faces)),
    ] + ([("model", "The model's update", model)] if model else [])
    body = "".join(f'<section aria-labelledby="{k}"><h2 id="{k}">{title}</h2>{content}</section>'
                   for k, title, content in sections)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Protection report: {e(report['job'])}</title><style>{STYLE}</style></head><body>
<header><h1>Protection report: {e(report['job'])}</h1>
<p class="meta">Dataset {e(d['source'])}, released as {e(d['anonymized'])} ({d['images']} images, {d['left_out']}
left out){finished}. Protected attributes: {e(', '.join(report['protected_attributes']) or 'none')}. Kept
attributes: {e(', '.join(report['kept_attributes']) or 'none')}.</p></header>
<main>{body}</main>
<footer><p class="note">Every figure is also in report.json (schema {e(report['schema'])}) for machines.</p></footer>
</body></html>
"""


def pdf(page: str) -> bytes | None:
    """The page printed by WeasyPrint; None (logged) where WeasyPrint or its system libraries (Pango) are
    missing, so that a finished job still gets its JSON and HTML."""
    from PIL import ImageFile

    truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        import weasyprint
    except (ImportError, OSError):
        log.exception("the report's PDF is not written: WeasyPrint cannot be loaded")
        return None
    finally:
        # Importing WeasyPrint turns on Pillow's LOAD_TRUNCATED_IMAGES for the whole process, and this process
        # checks uploaded images (a truncated one must stay an error): put it back. The page's own images are
        # whole PNGs, which need no such leniency.
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated
    return weasyprint.HTML(string=page).write_pdf()
