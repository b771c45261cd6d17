#!/usr/bin/env bash
# Installs Vega, Vega-Lite and Vega-Embed from npm at pinned versions into .cache/vega/ and writes the HTML
# template `dvc plots show/diff` fills (.dvc/config: plots.html_template), so interactive plots render
# offline. DVC's own page loads these scripts from a CDN (blank without network); this template inlines
# them, so the written page works anywhere it is opened or copied. Run from anywhere; a second run with the
# same pins does nothing.
set -euo pipefail

VEGA=5.33.1
VEGA_LITE=5.23.0 # DVC's plot templates are Vega-Lite v5 specs
VEGA_EMBED=6.29.0

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.cache/vega"
template="$dest/template.html"
pins="vega@$VEGA vega-lite@$VEGA_LITE vega-embed@$VEGA_EMBED"

if [[ -f "$template" && -f "$dest/pins" && "$(cat "$dest/pins")" == "$pins" ]]; then
    exit 0
fi
if ! command -v npm >/dev/null; then
    echo "fetch-vega: npm not found; install Node.js (Debian: apt-get install npm) and rerun $0" >&2
    exit 1
fi
mkdir -p "$dest"
rm -f "$dest/pins"
# shellcheck disable=SC2086  # $pins is three words on purpose
npm install --prefix "$dest" --no-audit --no-fund --ignore-scripts --save-exact --loglevel=error $pins

# The inlined code must not end the <script> element early; `<\/script` means the same inside JS strings.
inline() {
    local file="$dest/node_modules/$1"
    [[ -s "$file" ]] || { echo "fetch-vega: $file is missing or empty" >&2; exit 1; }
    printf '<script>/* %s */\n' "$1"
    sed 's#</script#<\\/script#gI' "$file"
    printf '\n</script>\n'
}

# DVC fills {refresh_tag} and {plot_divs}; without a {scripts} placeholder it adds no CDN <script> tags.
{
    cat <<'HEAD'
<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
HEAD
    inline vega/build/vega.min.js
    inline vega-lite/build/vega-lite.min.js
    inline vega-embed/build/vega-embed.min.js
    cat <<'TAIL'
<script>
// DVC's plot divs call vegaEmbed(element, spec) with no options: draw SVG (sharp when zoomed, and its marks
// are in the page, where a test can count them) instead of the default canvas.
(function () {
    var embed = window.vegaEmbed;
    window.vegaEmbed = Object.assign(function (element, spec, options) {
        return embed(element, spec, Object.assign({ renderer: "svg" }, options));
    }, embed);
})();
</script>
    <style>
        /* plots side by side, as many as the window holds, instead of one per row */
        body > div {
            display: inline-block;
            vertical-align: top;
            margin: 8px;
        }
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
TAIL
} >"$template.tmp"
if grep -q -e '{scripts}' "$template.tmp"; then
    echo "fetch-vega: an inlined script contains '{scripts}', which DVC would replace" >&2
    exit 1
fi
mv "$template.tmp" "$template"
echo "$pins" >"$dest/pins"
echo "fetch-vega: $pins -> ${template#"$root/"}"
