#!/usr/bin/env bash
# Installs everything Vigil needs on a fresh Debian machine, and nothing twice:
#   - redis-server, mosquitto and chromium from Debian (apt) when missing; Java 17+ and Maven
#     are checked
#   - a BASE virtual environment shared by every checkout (VIGIL_BASE_VENV, default
#     ~/.cache/vigil/venv) holding Vigil's dependencies only, so torch (~3.5 GB with its CUDA
#     wheels) is downloaded and installed once; pip's cache does the rest
#   - a per-checkout .venv that sees the base's packages through a .pth file and holds this
#     checkout's Vigil, editable: two clones on one machine each run their own code
#   - the Kafka broker's jars from Maven Central (cached in ~/.m2)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
base="${VIGIL_BASE_VENV:-${VIGIL_VENV:-$HOME/.cache/vigil/venv}}"
python="${VIGIL_PYTHON:-python3}"
venv="$root/.venv"

say() { printf '\033[1m[vigil setup]\033[0m %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
if ! command -v redis-server >/dev/null 2>&1 && [ -z "${VIGIL_REDIS_URL:-}" ]; then
  missing+=(redis-server)
fi
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
# the browser tests of the web UI (tests/test_web_ui.py) drive Debian's chromium with Playwright
[ -x /usr/bin/chromium ] || missing+=(chromium chromium-driver)
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]} (Debian packages)"
  as_root apt-get update -qq && as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ -z "${VIGIL_KAFKA_BOOTSTRAP:-}" ]; then
  command -v java >/dev/null || { echo "Java 17+ is needed for the local Kafka broker" >&2; exit 1; }
  command -v mvn >/dev/null || { echo "Maven (mvn) is needed to fetch the Kafka broker" >&2; exit 1; }
fi

# --- the shared base: dependencies only --------------------------------------------------
# Two checkouts bootstrapping at once must not install into the base together: one waits.
mkdir -p "$(dirname "$base")"
exec 9>"$base.lock"
flock 9
if [ ! -x "$base/bin/python" ]; then
  say "creating the shared base environment $base"
  "$python" -m venv "$base"
  "$base/bin/pip" install -q --upgrade pip
fi
requirements="$("$base/bin/python" - "$root/pyproject.toml" <<'EOF'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["dev"]))
EOF
)"
base_stamp="$base/.vigil-deps-$(printf '%s' "$requirements" | sha256sum | cut -c1-16)"
if [ ! -f "$base_stamp" ]; then
  say "installing Vigil's dependencies into $base (first time: torch is large)"
  printf '%s\n' "$requirements" > "$base/.vigil-requirements.txt"
  "$base/bin/pip" install -q -r "$base/.vigil-requirements.txt"
  # an older bootstrap installed Vigil itself here: the base must hold no checkout's code
  "$base/bin/pip" uninstall -q -y vigil >/dev/null 2>&1 || true
  touch "$base_stamp"
fi
base_site="$("$base/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
flock -u 9

# --- this checkout's own environment -------------------------------------------------------
if [ -L "$venv" ]; then rm -f "$venv"; fi  # older bootstraps linked .venv to the shared venv
minor='import sys; print("%d.%d" % sys.version_info[:2])'
if [ -x "$venv/bin/python" ] && [ "$("$venv/bin/python" -c "$minor")" != "$("$base/bin/python" -c "$minor")" ]; then
  say "$venv runs another Python than the base: recreating it"
  rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv (sees the base's packages, runs this checkout's code)"
  # the base's interpreter, so the .pth below never mixes two Python versions
  "$base/bin/python" -m venv "$venv"
fi
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$base_site" > "$site/vigil-base.pth"
stamp="$venv/.vigil-installed-$(sha256sum "$root/pyproject.toml" | cut -c1-16)"
# Run from / so the checkout in the working directory cannot stand in for an installed Vigil.
ours='import sys, vigil; sys.exit(not vigil.__file__.startswith(sys.argv[1]))'
if [ ! -f "$stamp" ] || ! (cd / && "$venv/bin/python" -c "$ours" "$root/") >/dev/null 2>&1; then
  say "installing this checkout ($root) into $venv, editable"
  "$venv/bin/python" -m pip install -q --no-deps -e "$root"
  rm -f "$venv"/.vigil-installed-*
  touch "$stamp"
fi

# The base's tools (pytest, ruff, mypy, ...) in .venv/bin too: Python ones re-pointed at this
# venv's interpreter so that they see this checkout's Vigil, binaries linked.
for tool in "$base"/bin/*; do
  name="${tool##*/}"
  case "$name" in python* | pip* | activate* | Activate.ps1 | vigil) continue ;; esac
  if head -n1 "$tool" | grep -q '^#!.*python'; then
    sed "1s|.*|#!$venv/bin/python|" "$tool" > "$venv/bin/$name.tmp"
    chmod +x "$venv/bin/$name.tmp"
    mv -f "$venv/bin/$name.tmp" "$venv/bin/$name"
  else
    ln -sfn "$tool" "$venv/bin/$name"
  fi
done

if [ -z "${VIGIL_KAFKA_BOOTSTRAP:-}" ]; then
  (cd "$root" && "$venv/bin/vigil" fetch-kafka)
fi
say "ready: $venv/bin/vigil"
