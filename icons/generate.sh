#!/usr/bin/env bash
# Regenerates the desktop app's icons with ImageMagick 6 (Debian's
# `imagemagick`; call /usr/bin/convert explicitly). No remote assets.
#
#   app icons:  32x32.png 128x128.png 128x128@2x.png icon.png (512) icon.ico icon.icns
#   tray icons: tray-signed-out.png tray-connecting.png tray-connected.png tray-error.png
#
# The glyph is a gangway: a plank rising to the right under a handrail with
# three posts, white on a blue rounded square. Tray icons add a status dot.
set -euo pipefail
cd "$(dirname "$0")"
IM=/usr/bin/convert
S=512

glyph() { # $1 = colour of the glyph
  echo "-stroke $1 -strokewidth 44 -fill none -draw \"line 112,372 400,236\"" \
       "-stroke $1 -strokewidth 26 -draw \"line 132,262 388,142\"" \
       "-stroke $1 -strokewidth 24 -draw \"line 150,352 150,256\"" \
       "-stroke $1 -strokewidth 24 -draw \"line 256,303 256,206\"" \
       "-stroke $1 -strokewidth 24 -draw \"line 362,253 362,158\""
}

base() { # $1 = top colour, $2 = bottom colour, $3 = glyph colour, $4 = output
  eval "$IM -size ${S}x${S} xc:none \
    \( -size ${S}x${S} gradient:'$1'-'$2' \) \
    \( -size ${S}x${S} xc:none -fill white -draw 'roundrectangle 24,24 488,488 104,104' \) \
    -delete 0 -alpha off -compose CopyOpacity -composite -compose Over \
    -stroke none $(glyph "$3") -strokewidth 0 '$4'"
}

base '#3b82f6' '#1d4ed8' white master.png
$IM master.png -resize 32x32 32x32.png
$IM master.png -resize 128x128 128x128.png
$IM master.png -resize 256x256 128x128@2x.png
cp master.png icon.png
$IM master.png -define icon:auto-resize=256,128,64,48,32,16 icon.ico

# Tray: 64 px (panels scale down), state dot bottom-right with a white ring.
tray() { # $1 top, $2 bottom, $3 dot colour or "none", $4 output
  base "$1" "$2" white tray-base.png
  if [ "$3" = none ]; then
    $IM tray-base.png -resize 64x64 "$4"
  else
    $IM tray-base.png -fill white -stroke none -draw "circle 392,392 392,270" \
      -fill "$3" -draw "circle 392,392 392,298" -resize 64x64 "$4"
  fi
}
tray '#9ca3af' '#6b7280' none tray-signed-out.png
tray '#3b82f6' '#1d4ed8' '#f59e0b' tray-connecting.png
tray '#3b82f6' '#1d4ed8' '#16a34a' tray-connected.png
tray '#3b82f6' '#1d4ed8' '#dc2626' tray-error.png
rm -f tray-base.png master.png

# macOS .icns: PNGs in ic07/ic08/ic09 chunks (128/256/512), built by hand.
python3 - <<'PY'
import struct, subprocess
chunks = b""
for kind, size in ((b"ic07", 128), (b"ic08", 256), (b"ic09", 512)):
    png = subprocess.run(["/usr/bin/convert", "icon.png", "-resize", f"{size}x{size}", "png:-"],
                         check=True, capture_output=True).stdout
    chunks += kind + struct.pack(">I", len(png) + 8) + png
open("icon.icns", "wb").write(b"icns" + struct.pack(">I", len(chunks) + 8) + chunks)
PY
echo "icons written to $(pwd)"
