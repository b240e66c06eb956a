"""The HTML template `dvc plots show` and `dvc plots diff` fill, with Vega inlined: plot pages that draw offline.

DVC's default page loads vega, vega-lite and vega-embed from a CDN, so on a machine without internet it stays
blank. This module writes a page template for DVC's config key `plots.html_template` that carries all three as one
classic script, built from the installed `vl-convert-python` package (`vl_convert.javascript_bundle`), with their
license notice. Nothing third-party is committed: the template is generated (stage `plots_template`, or
`vggbn plots-template`).

How DVC uses the template (dvc/commands/plots.py, dvc_render/html.py): a relative `plots.html_template` is joined
to `.dvc/`; the file's text gets `{plot_divs}`, `{scripts}` and `{refresh_tag}` replaced by plain string
replacement; and a configured file that does not exist is taken as the template text itself, which then fails with
"HTML template has to contain '{plot_divs}'". So the committed `.dvc/config` names a small first-party page that
every clone has (`.dvc/plots-fallback.html`: DVC's CDN scripts, and a note on what to run when they cannot load),
and the generated template is named in `.dvc/config.local` once it exists.
"""

from __future__ import annotations

import os
from pathlib import Path

from vggbn import VggbnError
from vggbn.storage.tables import write_text


VEGA_LITE_VERSION = "5.21"  # DVC's templates declare the Vega-Lite v5 schema
CONFIG_KEY = "plots.html_template"
FALLBACK = "plots-fallback.html"  # relative to .dvc/, committed: what a fresh clone's `dvc plots show` fills
DVC_PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")

# The libraries in the bundle (vl-convert's thirdparty_javascript.md, and vega-embed's own dependencies).
BUNDLED = [
    ("vega", "BSD-3-Clause", "https://github.com/vega/vega"),
    ("vega-lite", "BSD-3-Clause", "https://github.com/vega/vega-lite"),
    ("vega-embed", "BSD-3-Clause", "https://github.com/vega/vega-embed"),
    ("vega-themes", "BSD-3-Clause", "https://github.com/vega/vega-themes"),
    ("vega-tooltip", "BSD-3-Clause", "https://github.com/vega/vega-tooltip"),
    ("d3 (modules)", "ISC", "https://github.com/d3/d3"),
    ("delaunator", "ISC", "https://github.com/mapbox/delaunator"),
    ("internmap", "ISC", "https://github.com/mbostock/internmap"),
    ("topojson-client", "ISC", "https://github.com/topojson/topojson-client"),
    ("robust-predicates", "Unlicense", "https://github.com/mourner/robust-predicates"),
    ("array-flat-polyfill", "CC0-1.0", "https://github.com/jonathantneal/array-flat-polyfill"),
    ("clone", "MIT", "https://github.com/pvorb/clone"),
    ("fast-deep-equal", "MIT", "https://github.com/epoberezkin/fast-deep-equal"),
    ("fast-json-stable-stringify", "MIT", "https://github.com/epoberezkin/fast-json-stable-stringify"),
    ("json-stringify-pretty-compact", "MIT", "https://github.com/lydell/json-stringify-pretty-compact"),
    ("lodash.debounce", "MIT", "https://github.com/lodash/lodash"),
]

# Vega, Vega-Lite and Vega-Embed are licensed under these terms (their LICENSE files); the copyright holder is the
# University of Washington Interactive Data Lab.
VEGA_LICENSE = """\
Copyright (c) 2015-2023, University of Washington Interactive Data Lab. All rights reserved.

Redistribution and use in source and binary forms, with or without modification, are permitted provided that the
following conditions are met:
1. Redistributions of source code must retain the above copyright notice, this list of conditions and the following
   disclaimer.
2. Redistributions in binary form must reproduce the above copyright notice, this list of conditions and the
   following disclaimer in the documentation and/or other materials provided with the distribution.
3. Neither the name of the copyright holder nor the names of its contributors may be used to endorse or promote
   products derived from this software without specific prior written permission.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY EXPRESS OR IMPLIED WARRANTIES,
INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL,
SPECIAL, EXEMPLARY, OR CONSEQUENTIAL DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY,
WHETHER IN CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE
OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE."""

# Before the bundle: script errors and failed plots are written into the page (a list at its top), so that they
# are seen, in a browser and in a headless browser's DOM, instead of leaving a plot silently blank.
ERROR_HOOK = """\
(function () {
  var pending = [];
  function show() {
    var box = document.getElementById("vggbn-errors");
    if (!box) { return; }
    pending.forEach(function (text) {
      var item = document.createElement("li");
      item.textContent = text;
      box.appendChild(item);
    });
    pending = [];
    box.hidden = box.children.length === 0;
  }
  window.vggbnReportError = function (what, error) {
    pending.push(what + ": " + (error && error.message ? error.message : String(error)));
    if (document.readyState !== "loading") { show(); }
  };
  var consoleError = console.error;
  console.error = function () {
    window.vggbnReportError("console.error", Array.prototype.join.call(arguments, " "));
    return consoleError.apply(console, arguments);
  };
  window.addEventListener("error", function (event) { window.vggbnReportError("script error", event.message); });
  window.addEventListener("unhandledrejection", function (event) {
    window.vggbnReportError("script error", event.reason);
  });
  document.addEventListener("DOMContentLoaded", show);
})();"""

# After the bundle: DVC's plot divs call vegaEmbed('#id', spec). Draw as SVG (crisp when zoomed, and a headless
# browser's DOM then shows the marks) and mark each div drawn or failed.
EMBED_WRAPPER = """\
(function () {
  var embed = window.vegaEmbed;
  if (typeof embed !== "function") {
    window.vggbnReportError("vega-embed", "the inlined bundle did not define vegaEmbed");
    return;
  }
  window.vegaEmbed = function (target, spec, options) {
    var element = typeof target === "string" ? document.querySelector(target) : target;
    var settings = Object.assign({renderer: "svg"}, options || {});
    return embed(target, spec, settings).then(function (result) {
      if (element) { element.setAttribute("data-vggbn-plot", "drawn"); }
      return result;
    }, function (error) {
      if (element) { element.setAttribute("data-vggbn-plot", "failed"); }
      window.vggbnReportError("plot " + (element ? element.id : target), error);
    });
  };
})();"""

STYLE = """\
body { font-family: sans-serif; margin: 1em; }
#vggbn-errors { color: #b00020; font-family: monospace; }
.vega-embed { margin: 0 1.5em 1.5em 0; vertical-align: top; }"""


class PlotsTemplateError(VggbnError):
    pass


def license_notice(versions: dict[str, str], vl_convert_license: str) -> str:
    """The notice that travels with the bundle: what it holds, under which licenses, and vl-convert's license."""
    lines = [
        "Vega, Vega-Lite and Vega-Embed, bundled by vl-convert-python "
        f"{versions['vl-convert-python']} (vega {versions['vega']}, vega-lite {versions['vega-lite']}, "
        f"vega-embed {versions['vega-embed']}), inlined by vggbn's plots_template stage.",
        "",
        "The bundle holds these libraries, under these licenses:",
    ]
    lines += [f"  {name}: {license_id}, {source}" for name, license_id, source in BUNDLED]
    lines += ["", "Vega, Vega-Lite, Vega-Embed, Vega-Themes and Vega-Tooltip:", "", VEGA_LICENSE, "",
              "vl-convert-python (https://github.com/vega/vl-convert):", "", vl_convert_license.strip()]
    return "\n".join(lines)


def _check_inlinable(text: str, what: str) -> None:
    """`text` must survive DVC's placeholder replacement and sit inside a <script> or a comment unchanged."""
    for marker in (*DVC_PLACEHOLDERS, "</script", "<!--", "-->"):
        if marker in text.lower():
            raise PlotsTemplateError(f"{what} contains {marker!r}: it cannot be inlined in DVC's HTML template")


def page_template(bundle: str, notice: str) -> str:
    """A DVC HTML template (it holds `{plot_divs}`) that defines vegaEmbed from `bundle` before any plot div runs.

    Neither `{scripts}` (DVC's CDN script tags) nor any URL: the page needs no network.
    """
    _check_inlinable(bundle, "the JavaScript bundle")
    _check_inlinable(notice, "the license notice")
    return "\n".join([
        "<!DOCTYPE html>",
        "<html>",
        "<head>",
        '<meta charset="utf-8">',
        "{refresh_tag}",
        "<title>vggbn plots</title>",
        "<!--",
        notice,
        "-->",
        f"<style>\n{STYLE}\n</style>",
        f"<script>\n{ERROR_HOOK}\n</script>",
        f"<script>\n{bundle}\n</script>",
        f"<script>\n{EMBED_WRAPPER}\n</script>",
        "</head>",
        "<body>",
        '<ul id="vggbn-errors" hidden></ul>',
        "{plot_divs}",
        "</body>",
        "</html>",
        "",
    ])


def bundle_and_notice() -> tuple[str, str]:
    """The installed vl-convert-python's bundle of Vega, Vega-Lite and Vega-Embed, and its license notice."""
    from importlib import metadata

    try:
        import vl_convert
    except ImportError:
        raise PlotsTemplateError("the vl-convert-python package is not installed: pip install -e .") from None
    if not hasattr(vl_convert, "javascript_bundle"):
        raise PlotsTemplateError(f"vl-convert-python {metadata.version('vl-convert-python')} has no "
                                 "javascript_bundle: pip install 'vl-convert-python>=1.7'")
    distribution = metadata.distribution("vl-convert-python")
    license_files = [f for f in distribution.files or [] if Path(str(f)).name.upper().startswith("LICENSE")]
    license_text = "\n\n".join(f.read_text() or "" for f in license_files) or "BSD-3-Clause, Copyright 2023 Jon Mease"
    versions = {"vl-convert-python": distribution.version, "vega": vl_convert.get_vega_version(),
                "vega-lite": VEGA_LITE_VERSION, "vega-embed": vl_convert.get_vega_embed_version()}
    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE_VERSION)
    return bundle, license_notice(versions, license_text)


def write_template(out: str | os.PathLike) -> None:
    bundle, notice = bundle_and_notice()
    write_text(out, page_template(bundle, notice))


# --- where DVC looks for it ---------------------------------------------------------------------------------------

def config_value(template: str | os.PathLike, dvc_dir: str | os.PathLike = ".dvc") -> str:
    """The `plots.html_template` value that names `template`: DVC joins a relative one to `.dvc/`."""
    return Path(os.path.relpath(Path(template).resolve(), Path(dvc_dir).resolve())).as_posix()


def point_dvc_at(template: str | os.PathLike, dvc_dir: str | os.PathLike = ".dvc") -> str:
    """Name `template` in `.dvc/config.local`, unless the user named a template of their own there.

    The committed `.dvc/config` names the fallback page, which every clone has; the local setting overrides it
    once the generated template exists. Returns what was done, as a sentence.
    """
    from dvc.config import Config, ConfigError

    value = config_value(template, dvc_dir)
    local = Path(dvc_dir) / "config.local"
    try:
        config = Config(dvc_dir=os.fspath(dvc_dir), validate=False)
        configured = config.load_one("local").get("plots", {}).get("html_template")
        if configured == value:
            return f"{CONFIG_KEY} already names {template} in {local}"
        if configured not in (None, "", FALLBACK):
            return (f"{CONFIG_KEY} is {configured!r} in {local}, kept; to draw plots offline run "
                    f"`dvc config --local {CONFIG_KEY} {value}`")
        with config.edit("local", validate=False) as conf:
            conf.setdefault("plots", {})["html_template"] = value
    except ConfigError as error:
        raise PlotsTemplateError(f"{local}: cannot set {CONFIG_KEY}: {error}") from None
    return f"{CONFIG_KEY} = {value} in {local}: `dvc plots show` and `dvc plots diff` draw offline"
