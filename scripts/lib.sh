# Shared helpers for the scripts in this folder (sourced, not run).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK="${BANTER_STACK_DIR:-$ROOT/.stack}"
mkdir -p "$STACK/logs"

say() { printf '[%s] %s\n' "${BANTER_SCRIPT:-banter}" "$*" >&2; }
die() { printf '[%s] error: %s\n' "${BANTER_SCRIPT:-banter}" "$*" >&2; exit 1; }

# Installs the Debian packages that are missing (as root, or with sudo).
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get to install them; install them by hand"
  local sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  say "installing ${missing[*]} (apt)"
  local log="$STACK/logs/apt.log"
  if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
    $sudo apt-get update -qq >>"$log" 2>&1 || true
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$log" 2>&1 \
      || die "cannot install ${missing[*]}: see $log"
  fi
}
