"""The self-contained HTML pages charrnn writes (visualize.py's, export.py's): a template with its data embedded as
JSON, so a page opens offline from disk and fetches nothing."""

import html
import json

# What every page starts with: the generator tag that marks it as charrnn's, its title, and the common style.
HEAD = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="generator" content="{{generator}}">
<title>charrnn: {{title}}</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; color: #222; margin: 1.2em auto; padding: 0 1em; }
h1 { font-size: 1.3em; margin: 0 0 .2em; }
</style>
"""


def fill(template: str, generator: str, title: str, data: dict) -> str:
    """``template`` with ``{{generator}}`` (the meta tag that marks a page as charrnn's), ``{{title}}`` (escaped) and
    ``{{data}}`` (the JSON of ``data``) filled in."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    # '<', '>' and '&' occur only inside JSON strings; escaped, no text of the user's can end the script block early.
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    before, after = template.split("{{data}}")  # the data last and outside the template: its text is the user's
    return before.replace("{{generator}}", generator).replace("{{title}}", html.escape(title)) + text + after
