"""A self-contained HTML page of a recorded conversation with the bot (the demo's output).

It shows each step as the member saw it: what they did, the bot's private (ephemeral) and
public messages with their embeds, images and buttons, and the progress edits in between.
Message text is escaped; only a little Discord markdown (bold, code, mentions, timestamps) is
rendered.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass
class Shown:
    content: str
    ephemeral: bool
    embeds: list[dict[str, Any]] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    buttons: list[str] = field(default_factory=list)
    note: str = ""


@dataclass
class Step:
    title: str
    action: str
    progress: list[str] = field(default_factory=list)
    shown: list[Shown] = field(default_factory=list)


_CSS = """
body{background:#313338;color:#dbdee1;font:15px/1.45 system-ui,sans-serif;margin:0;padding:24px}
main{max-width:860px;margin:auto}h1{color:#fff}h2{color:#fff;margin-top:32px;font-size:18px}
.action{color:#b5bac1;margin:6px 0 10px}.action code{background:#1e1f22;padding:2px 6px;
border-radius:4px}.msg{background:#2b2d31;border-radius:8px;padding:10px 14px;margin:8px 0}
.msg.eph{border-left:3px solid #5865f2}.who{font-weight:600;color:#fff}.tag{font-size:12px;
color:#949ba4;margin-left:8px}.content{white-space:pre-wrap;margin-top:4px}.embed{border-left:
4px solid #5865f2;background:#232428;border-radius:4px;padding:8px 12px;margin-top:8px}
.embed .f{display:inline-block;margin:6px 18px 0 0}.embed .n{font-weight:600;font-size:13px}
.images img{min-width:160px;max-width:420px;image-rendering:pixelated;margin:8px 8px 0 0;
border-radius:4px}
.btn{display:inline-block;background:#4e5058;color:#fff;border-radius:4px;padding:3px 12px;
margin:8px 6px 0 0;font-size:14px}.progress{color:#949ba4;font-size:13px;margin:4px 0}
.mention{background:#5865f24d;color:#c9cdfb;border-radius:3px;padding:0 2px}
details{margin-top:40px}pre{white-space:pre-wrap;font-size:12px;color:#949ba4}
"""


def _markdown(text: str) -> str:
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    out = re.sub(r"\\([*_~`|>\\])", r"\1", out)  # escape_markdown's backslashes
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"&lt;@!?(\d+)&gt;", r'<span class="mention">@member</span>', out)
    out = re.sub(r"&lt;@&amp;(\d+)&gt;", r'<span class="mention">@role</span>', out)

    def stamp(match: re.Match[str]) -> str:
        when = datetime.fromtimestamp(int(match[1]), UTC)
        at = "at " if match[2] == "R" else ""  # "resets <t:…:R>" reads "resets in 3 hours"
        return f'<span class="mention">{at}{when:%Y-%m-%d %H:%M} UTC</span>'

    return re.sub(r"&lt;t:(\d+)(?::(\w))?&gt;", stamp, out)


def _embed(embed: dict[str, Any]) -> str:
    parts = ['<div class="embed">']
    author = (embed.get("author") or {}).get("name")
    if author:
        parts.append(f'<div class="n">{html.escape(author)}</div>')
    if embed.get("title"):
        parts.append(f'<div class="who">{html.escape(embed["title"])}</div>')
    if embed.get("description"):
        parts.append(f'<div class="content">{_markdown(embed["description"])}</div>')
    for f in embed.get("fields", []):
        parts.append(
            f'<div class="f"><div class="n">{html.escape(f["name"])}</div>'
            f"{_markdown(str(f['value']))}</div>"
        )
    if (embed.get("footer") or {}).get("text"):
        parts.append(f'<div class="progress">{html.escape(embed["footer"]["text"])}</div>')
    parts.append("</div>")
    return "".join(parts)


def _message(shown: Shown) -> str:
    tag = "only you can see this" if shown.ephemeral else "in #renders"
    if shown.note:
        tag += f" — {shown.note}"
    parts = [
        f'<div class="msg{" eph" if shown.ephemeral else ""}">',
        f'<span class="who">avatarbot</span><span class="tag">{html.escape(tag)}</span>',
    ]
    if shown.content:
        parts.append(f'<div class="content">{_markdown(shown.content)}</div>')
    parts += [_embed(e) for e in shown.embeds]
    if shown.images:
        imgs = "".join(f'<img src="{html.escape(p)}" alt="">' for p in shown.images)
        parts.append(f'<div class="images">{imgs}</div>')
    if shown.buttons:
        parts.append("".join(f'<span class="btn">{html.escape(b)}</span>' for b in shown.buttons))
    parts.append("</div>")
    return "".join(parts)


def render_transcript(steps: list[Step], raw: str = "") -> str:
    body = ["<h1>avatarbot — demo session</h1>"]
    body.append(
        "<p>The real bot (discord.py) on SimCord, an in-memory Discord, with the <code>tiny</code>"
        " engine: random-weight models, so the images are noise by design.</p>"
    )
    for number, step in enumerate(steps, 1):
        body.append(f"<h2>{number}. {html.escape(step.title)}</h2>")
        body.append(f'<div class="action">you: <code>{html.escape(step.action)}</code></div>')
        if step.progress:
            edits = " → ".join(_markdown(e.splitlines()[0]) for e in step.progress)
            body.append(f'<div class="progress">progress message: {edits}</div>')
        body += [_message(s) for s in step.shown]
    if raw:
        body.append(
            "<details><summary>Everything the bot sent and received (SimCord transcript)"
            f"</summary><pre>{html.escape(raw)}</pre></details>"
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>avatarbot demo</title>"
        f"<style>{_CSS}</style></head><body><main>{''.join(body)}</main></body></html>"
    )


def write_transcript(path: Path, steps: list[Step], raw: str = "") -> Path:
    path.write_text(render_transcript(steps, raw), encoding="utf-8")
    return path
