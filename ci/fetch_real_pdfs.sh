#!/usr/bin/env bash
# Real PDFs for the tests: R package vignettes from Debian's archive (GPL-licensed documents),
# extracted without installing the packages (no R needed).
set -euo pipefail
dest="${LONGDOC_REAL_PDFS:-$(cd "$(dirname "$0")/.." && pwd)/tests/data/real_pdfs}"
packages=(r-cran-zoo r-cran-sandwich r-cran-xts)
mkdir -p "$dest"
if compgen -G "$dest/*.pdf" >/dev/null && [ "$(ls "$dest"/*.pdf | wc -l)" -ge 8 ]; then
    echo "real PDFs already in $dest"
    exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get download "${packages[@]}"
for deb in ./*.deb; do
    dpkg -x "$deb" extracted
done
find extracted -name '*.pdf' -exec cp {} "$dest"/ \;
echo "$(ls "$dest"/*.pdf | wc -l) real PDFs in $dest"
