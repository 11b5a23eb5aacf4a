#!/usr/bin/env bash
# Installs everything Vigil needs on a fresh Debian machine, and nothing twice:
#   - redis-server from Debian (apt) when missing; Java 17+ and Maven are checked, not installed
#   - a virtual environment shared by every checkout (VIGIL_VENV, default ~/.cache/vigil/venv),
#     so torch (~3.5 GB with its CUDA wheels) is downloaded once; pip's cache does the rest
#   - Vigil itself, editable, with its dev extras; .venv in the checkout points at that venv
#   - the Kafka broker's jars from Maven Central (cached in ~/.m2)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${VIGIL_VENV:-$HOME/.cache/vigil/venv}"
python="${VIGIL_PYTHON:-python3}"

say() { printf '\033[1m[vigil setup]\033[0m %s\n' "$*"; }

if ! command -v redis-server >/dev/null 2>&1 && [ -z "${VIGIL_REDIS_URL:-}" ]; then
  say "installing redis-server (Debian package)"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq redis-server >/dev/null; fi
fi
if [ -z "${VIGIL_KAFKA_BOOTSTRAP:-}" ]; then
  command -v java >/dev/null || { echo "Java 17+ is needed for the local Kafka broker" >&2; exit 1; }
  command -v mvn >/dev/null || { echo "Maven (mvn) is needed to fetch the Kafka broker" >&2; exit 1; }
fi

if [ ! -x "$venv/bin/python" ]; then
  say "creating virtual environment $venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
fi
stamp="$venv/.vigil-installed-$(sha256sum "$root/pyproject.toml" | cut -c1-16)-$(echo "$root" | sha256sum | cut -c1-8)"
if [ ! -f "$stamp" ]; then
  say "installing Vigil and its dependencies into $venv (first time: torch is large)"
  "$venv/bin/pip" install -q -e "$root[dev]"
  touch "$stamp"
fi
ln -sfn "$venv" "$root/.venv"

if [ -z "${VIGIL_KAFKA_BOOTSTRAP:-}" ]; then
  (cd "$root" && "$venv/bin/vigil" fetch-kafka)
fi
say "ready: $root/.venv/bin/vigil"
